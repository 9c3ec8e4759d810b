//! Bounds on what a station's tag list may make the gateway hold
//! (`wincc.max_tags`): the dialects collect browse pages through a
//! [`TagCollector`], which keeps at most `max_tags` tags and stops paging
//! once it has them, and gives up on a station that keeps sending pages
//! without ever finishing. A station with more tags gets one clear error
//! in the log; the first `max_tags` (in the station's order) are known and
//! polled, the rest are not.

use crate::model::TagInfo;

use super::StationError;

/// Pages a browse may take at most: room for an average of 10 tags per
/// page up to `max_tags`, and never fewer than this.
const MIN_PAGE_BUDGET: usize = 1_000;

/// Collects the pages of one browse (see the module doc).
pub(crate) struct TagCollector<T = TagInfo> {
    max_tags: usize,
    max_pages: usize,
    pages: usize,
    tags: Vec<T>,
    /// Tags the station listed beyond `max_tags` (at least; paging stopped).
    over: usize,
}

impl<T> TagCollector<T> {
    pub(crate) fn new(max_tags: usize) -> Self {
        let max_tags = max_tags.max(1);
        TagCollector {
            max_tags,
            max_pages: (max_tags / 10).max(MIN_PAGE_BUDGET),
            pages: 0,
            tags: Vec::new(),
            over: 0,
        }
    }

    /// Takes one page. `Ok(true)`: ask for the next page; `Ok(false)`: the
    /// cap is reached, stop paging. `Err`: the station sent more pages than
    /// any tag list of `max_tags` tags needs.
    pub(crate) fn page(&mut self, tags: Vec<T>) -> Result<bool, StationError> {
        self.pages += 1;
        let room = self.max_tags - self.tags.len();
        if tags.len() > room {
            self.over += tags.len() - room;
            self.tags.extend(tags.into_iter().take(room));
            return Ok(false);
        }
        self.tags.extend(tags);
        if self.pages >= self.max_pages {
            return Err(StationError::Malformed(format!(
                "the tag list did not end after {} pages ({} tags); a station with more tags \
                 than wincc.max_tags = {} is cut there, one that pages on without end is broken",
                self.pages,
                self.tags.len(),
                self.max_tags
            )));
        }
        Ok(true)
    }

    /// Takes a tag list that came in one piece (no paging).
    pub(crate) fn all(mut self, tags: Vec<T>) -> Vec<T> {
        let _ = self.page(tags);
        self.finish()
    }

    /// The tags, at most `max_tags`; logs the cut once per browse.
    pub(crate) fn finish(self) -> Vec<T> {
        if self.over > 0 {
            tracing::error!(
                max_tags = self.max_tags,
                beyond = format!("{}+", self.over),
                "the station lists more tags than wincc.max_tags: only the first {} are known and \
                 polled; raise wincc.max_tags (memory grows with it) or narrow the station's tag list",
                self.max_tags
            );
            metrics::counter!("wincc_gateway_browse_truncated_total").increment(1);
        }
        metrics::gauge!("wincc_gateway_station_tags_over_limit").set(self.over as f64);
        self.tags
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::TagType;

    fn page(from: usize, n: usize) -> Vec<TagInfo> {
        (from..from + n)
            .map(|i| TagInfo {
                name: format!("T{i}"),
                ty: TagType::Int32,
                writable: false,
            })
            .collect()
    }

    #[test]
    fn keeps_the_first_max_tags_and_stops_paging() {
        let mut c = TagCollector::new(2500);
        assert!(c.page(page(0, 1000)).unwrap());
        assert!(c.page(page(1000, 1000)).unwrap());
        assert!(!c.page(page(2000, 1000)).unwrap());
        let tags = c.finish();
        assert_eq!(tags.len(), 2500);
        assert_eq!(tags[2499].name, "T2499");
    }

    #[test]
    fn endless_paging_is_an_error() {
        let mut c = TagCollector::new(5000);
        let mut n = 0;
        let err = loop {
            match c.page(page(n, 0)) {
                Ok(true) => n += 1,
                Ok(false) => panic!("stopped without the cap"),
                Err(e) => break e,
            }
        };
        assert_eq!(n + 1, MIN_PAGE_BUDGET);
        assert!(err.to_string().contains("did not end"), "{err}");
    }

    #[test]
    fn one_piece_lists_are_cut_too() {
        assert_eq!(TagCollector::new(3).all(page(0, 10)).len(), 3);
        assert_eq!(TagCollector::new(30).all(page(0, 10)).len(), 10);
    }
}
