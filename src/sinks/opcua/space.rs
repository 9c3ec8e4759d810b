//! The `Objects/WinCC/...` tree: folders per tag-name level, one Variable per tag.
//!
//! Levels follow the MQTT topic rules of contract §7: read left to right, a
//! `/` separates two levels only when both are non-empty (`A//B` has the
//! levels `A` and `/B`, `/A` and `A/` are one level each).
//! Folders live in the namespace `<namespace_uri>/folders` with the NodeId
//! `s=<level path>`, the tag name's prefix up to that level (`Line1/Mixer`);
//! variables live in `<namespace_uri>` with `s=<tag name>`, so a folder and a
//! tag with the same text never collide. The `WinCC` root folder itself is
//! `i=1` in the folders namespace, an id no level path can take.
//!
//! [`Space`] mirrors what is in the address space; it is owned by the sink's
//! event loop, the only writer of the tree.

use std::collections::{HashMap, HashSet};

use opcua::server::address_space::{
    AccessLevel, AddressSpace, EventNotifier, NodeType, ObjectBuilder, ReferenceDirection,
    VariableBuilder,
};
use opcua::types::{
    DataValue, DateTime, LocalizedText, NodeId, ObjectId, QualifiedName, ReferenceTypeId,
    StatusCode, VariableTypeId, Variant,
};

use crate::model::{TagInfo, TagType};

use super::convert::data_type;

/// The browse name (and display name) of the root folder under `Objects`.
pub const ROOT_NAME: &str = "WinCC";

/// Splits a tag name into its levels (see the module doc). Returns byte
/// ranges into `name`; the levels joined back with `/` give `name`.
pub fn level_ranges(name: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut level_len = 0usize;
    let mut chars = name.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c == '/' && level_len > 0 && chars.peek().is_some() {
            out.push((start, i));
            start = i + 1;
            level_len = 0;
        } else {
            level_len += 1;
        }
    }
    out.push((start, name.len()));
    out
}

/// The levels of a tag name as strings.
pub fn levels(name: &str) -> Vec<&str> {
    level_ranges(name)
        .into_iter()
        .map(|(a, b)| &name[a..b])
        .collect()
}

/// What the address space holds for one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TagEntry {
    pub ty: TagType,
    pub writable: bool,
}

/// The sink's view of its part of the address space.
pub struct Space {
    pub tag_ns: u16,
    pub folder_ns: u16,
    tags: HashMap<String, TagEntry>,
    /// Folder level path → number of tags below it.
    folders: HashMap<String, usize>,
}

/// What a sync changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub added: usize,
    pub removed: Vec<NodeId>,
    pub updated: usize,
}

/// The NodeId of the root `WinCC` folder.
pub fn root_id(folder_ns: u16) -> NodeId {
    NodeId::new(folder_ns, 1u32)
}

/// Adds the `WinCC` root folder under `Objects`. It emits the alarm
/// events (EventNotifier SubscribeToEvents) and is a notifier of the
/// `Server` object (`Server` HasNotifier `WinCC`).
pub fn add_root(space: &mut AddressSpace, folder_ns: u16) {
    ObjectBuilder::new(
        &root_id(folder_ns),
        QualifiedName::new(folder_ns, ROOT_NAME),
        ROOT_NAME,
    )
    .is_folder()
    .event_notifier(EventNotifier::SUBSCRIBE_TO_EVENTS)
    .organized_by(ObjectId::ObjectsFolder)
    .reference(
        ObjectId::Server,
        ReferenceTypeId::HasNotifier,
        ReferenceDirection::Inverse,
    )
    .insert(space);
}

impl Space {
    pub fn new(tag_ns: u16, folder_ns: u16) -> Self {
        Space {
            tag_ns,
            folder_ns,
            tags: HashMap::new(),
            folders: HashMap::new(),
        }
    }

    pub fn tag_id(&self, name: &str) -> NodeId {
        NodeId::new(self.tag_ns, name)
    }

    fn folder_id(&self, path: &str) -> NodeId {
        NodeId::new(self.folder_ns, path)
    }

    pub fn get(&self, name: &str) -> Option<TagEntry> {
        self.tags.get(name).copied()
    }

    pub fn len(&self) -> usize {
        self.tags.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tags.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tags.keys().map(String::as_str)
    }

    /// Makes the tree hold exactly `tags`: adds new ones, removes vanished
    /// ones (and folders left empty), re-creates tags whose type changed and
    /// updates the access level of those whose writability changed.
    /// `may_write(name)` tells whether the write policy allows the tag.
    pub fn sync(
        &mut self,
        space: &mut AddressSpace,
        tags: &[TagInfo],
        may_write: &dyn Fn(&str) -> bool,
    ) -> SyncReport {
        let mut report = SyncReport::default();
        let mut wanted: HashMap<&str, TagEntry> = HashMap::with_capacity(tags.len());
        for t in tags {
            if t.name.is_empty() {
                tracing::warn!("OPC UA: ignoring a tag with an empty name");
                continue;
            }
            let entry = TagEntry {
                ty: t.ty,
                writable: t.writable && may_write(&t.name),
            };
            wanted.entry(t.name.as_str()).or_insert(entry);
        }
        let vanished: Vec<String> = self
            .tags
            .keys()
            .filter(|n| !wanted.contains_key(n.as_str()))
            .cloned()
            .collect();
        for name in vanished {
            self.remove(space, &name);
            report.removed.push(self.tag_id(&name));
        }
        for (name, entry) in wanted {
            match self.tags.get(name).copied() {
                None => {
                    self.add(space, name, entry);
                    report.added += 1;
                }
                Some(old) if old.ty != entry.ty => {
                    self.remove(space, name);
                    self.add(space, name, entry);
                    report.updated += 1;
                }
                Some(old) if old.writable != entry.writable => {
                    if let Some(NodeType::Variable(v)) = space.find_mut(&self.tag_id(name)) {
                        let level = access_level(entry.writable);
                        v.set_access_level(level);
                        v.set_user_access_level(level);
                    }
                    self.tags.insert(name.to_string(), entry);
                    report.updated += 1;
                }
                Some(_) => {}
            }
        }
        report
    }

    /// Adds one tag (and its missing folders). Replaces nothing: the caller
    /// removes an existing tag first.
    pub fn add(&mut self, space: &mut AddressSpace, name: &str, entry: TagEntry) {
        let ranges = level_ranges(name);
        let mut parent = root_id(self.folder_ns);
        for &(a, b) in &ranges[..ranges.len() - 1] {
            let path = &name[..b];
            let id = self.folder_id(path);
            // Most tags share folders: look up before allocating the key.
            match self.folders.get_mut(path) {
                Some(count) if *count > 0 => *count += 1,
                _ => {
                    let level = &name[a..b];
                    space.add_folder(
                        &id,
                        QualifiedName::new(self.folder_ns, level),
                        level,
                        &parent,
                    );
                    self.folders.insert(path.to_string(), 1);
                }
            }
            parent = id;
        }
        let (a, b) = *ranges.last().expect("at least one level");
        let level = &name[a..b];
        let level_access = access_level(entry.writable);
        let id = self.tag_id(name);
        let inserted = VariableBuilder::new(
            &id,
            QualifiedName::new(self.tag_ns, level),
            LocalizedText::new("", level),
        )
        .data_type(data_type(entry.ty))
        .value_rank(-1)
        .access_level(level_access)
        .user_access_level(level_access)
        .historizing(false)
        .has_type_definition(VariableTypeId::BaseDataVariableType)
        .organized_by(parent)
        .insert(space);
        if inserted {
            if let Some(NodeType::Variable(v)) = space.find_mut(&id) {
                v.set_data_value(waiting_value());
            }
        }
        self.tags.insert(name.to_string(), entry);
    }

    /// Removes one tag and every folder that has no tag below it any more.
    pub fn remove(&mut self, space: &mut AddressSpace, name: &str) {
        if self.tags.remove(name).is_none() {
            return;
        }
        space.delete(&self.tag_id(name), true);
        let ranges = level_ranges(name);
        // Deepest folder first, so a parent goes after its children.
        for &(_, b) in ranges[..ranges.len() - 1].iter().rev() {
            let path = &name[..b];
            if let Some(count) = self.folders.get_mut(path) {
                *count -= 1;
                if *count == 0 {
                    self.folders.remove(path);
                    space.delete(&self.folder_id(path), true);
                }
            }
        }
    }

    /// Folder level paths currently present (for tests and diagnostics).
    pub fn folder_paths(&self) -> HashSet<&str> {
        self.folders.keys().map(String::as_str).collect()
    }
}

fn access_level(writable: bool) -> AccessLevel {
    if writable {
        AccessLevel::CURRENT_READ | AccessLevel::CURRENT_WRITE
    } else {
        AccessLevel::CURRENT_READ
    }
}

/// The value of a variable before the station gave one.
pub fn waiting_value() -> DataValue {
    DataValue {
        value: Some(Variant::Empty),
        status: Some(StatusCode::BadWaitingForInitialData),
        source_timestamp: None,
        source_picoseconds: None,
        server_timestamp: Some(DateTime::now()),
        server_picoseconds: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topic;
    use opcua::server::address_space::NodeBase;

    #[test]
    fn levels_follow_the_topic_rules() {
        assert_eq!(levels("Line1/Mixer/Speed"), ["Line1", "Mixer", "Speed"]);
        assert_eq!(levels("/A"), ["/A"]);
        assert_eq!(levels("A/"), ["A/"]);
        assert_eq!(levels("A//B"), ["A", "/B"]);
        assert_eq!(levels("/"), ["/"]);
        assert_eq!(levels("Tank 3.Level"), ["Tank 3.Level"]);
        assert_eq!(levels("Kühlung/Temp°C"), ["Kühlung", "Temp°C"]);
        // Same split as the MQTT topic, for hostile names too.
        for n in [
            "A//B",
            "/",
            "//",
            "///x",
            "a/",
            "+",
            "a/+/#",
            "\u{1}/\u{2}",
            "ünï/cødé",
            "A/ /B",
            "x///y/",
            "a/b//c/d",
        ] {
            let from_topic: Vec<String> = topic::encode(n)
                .split('/')
                .map(|l| topic::decode(l).unwrap())
                .collect();
            assert_eq!(levels(n), from_topic, "{n:?}");
            assert_eq!(levels(n).join("/"), n);
        }
    }

    fn tag(name: &str, ty: TagType, writable: bool) -> TagInfo {
        TagInfo {
            name: name.into(),
            ty,
            writable,
        }
    }

    fn new_space() -> (AddressSpace, Space) {
        let mut a = AddressSpace::new();
        a.add_namespace("urn:t", 2);
        a.add_namespace("urn:t/folders", 3);
        add_root(&mut a, 3);
        (a, Space::new(2, 3))
    }

    #[test]
    fn sync_adds_updates_and_removes_with_folders() {
        let (mut a, mut s) = new_space();
        let all = |_: &str| true;
        let r = s.sync(
            &mut a,
            &[
                tag("Line1/Mixer/Speed", TagType::Double, true),
                tag("Line1/Mixer/On", TagType::Bool, false),
                tag("Line1", TagType::Int32, false),
                tag("A//B", TagType::String, false),
                tag("", TagType::String, false),
            ],
            &all,
        );
        assert_eq!(r.added, 4);
        assert_eq!(
            s.folder_paths(),
            HashSet::from(["Line1", "Line1/Mixer", "A"])
        );
        // A folder and a variable with the same text live side by side.
        assert!(a.find(&NodeId::new(3, "Line1")).is_some());
        let Some(NodeType::Variable(v)) = a.find(&NodeId::new(2, "Line1")) else {
            panic!("no variable")
        };
        assert_eq!(v.data_type(), NodeId::from(opcua::types::DataTypeId::Int32));
        assert_eq!(v.browse_name(), &QualifiedName::new(2, "Line1"));
        let Some(NodeType::Variable(v)) = a.find(&NodeId::new(2, "Line1/Mixer/Speed")) else {
            panic!("no variable")
        };
        assert!(v.access_level().contains(AccessLevel::CURRENT_WRITE));
        assert_eq!(
            v.value(
                opcua::types::TimestampsToReturn::Both,
                &Default::default(),
                &Default::default(),
                0.0
            )
            .status,
            Some(StatusCode::BadWaitingForInitialData)
        );
        assert!(a.find(&NodeId::new(2, "A//B")).is_some());
        assert!(a.find(&NodeId::new(3, "A")).is_some());

        // Speed loses writability, On changes type, Line1 and A//B vanish.
        let none = |_: &str| false;
        let r = s.sync(
            &mut a,
            &[
                tag("Line1/Mixer/Speed", TagType::Double, true),
                tag("Line1/Mixer/On", TagType::Int16, false),
            ],
            &none,
        );
        assert_eq!(r.updated, 2);
        assert_eq!(r.removed.len(), 2);
        assert_eq!(s.folder_paths(), HashSet::from(["Line1", "Line1/Mixer"]));
        assert!(a.find(&NodeId::new(2, "Line1")).is_none());
        assert!(a.find(&NodeId::new(3, "A")).is_none());
        let Some(NodeType::Variable(v)) = a.find(&NodeId::new(2, "Line1/Mixer/Speed")) else {
            panic!("no variable")
        };
        assert!(!v.user_access_level().contains(AccessLevel::CURRENT_WRITE));
        let Some(NodeType::Variable(v)) = a.find(&NodeId::new(2, "Line1/Mixer/On")) else {
            panic!("no variable")
        };
        assert_eq!(v.data_type(), NodeId::from(opcua::types::DataTypeId::Int16));

        let r = s.sync(&mut a, &[], &none);
        assert_eq!(r.removed.len(), 2);
        assert!(s.folder_paths().is_empty());
        assert!(a.find(&NodeId::new(3, "Line1")).is_none());
        assert!(a.find(&root_id(3)).is_some());
    }
}
