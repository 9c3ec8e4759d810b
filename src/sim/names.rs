//! Deterministic generation of a realistic tag population: hierarchical
//! plant names over every [`TagType`], plus a fixed set of hostile names
//! that every consumer of the simulator must survive.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::model::{TagInfo, TagType};

/// How the ticker moves a tag's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Random walk between `lo` and `hi` (numeric types).
    Walk { lo: f64, hi: f64 },
    /// Monotonic counter, increases by 0..=`step`.
    Counter { step: u32 },
    /// Bool that flips now and then.
    Toggle,
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    /// DateTime that jumps to "now" when it changes.
    Now,
}

/// One generated tag: metadata plus how its value behaves.
#[derive(Debug, Clone)]
pub struct TagSpec {
    pub info: TagInfo,
    pub behaviour: Behaviour,
}

const STATES: &[&str] = &[
    "Running", "Stopped", "Idle", "Fault", "Cleaning", "Starting",
];
const RECIPES: &[&str] = &["Recipe A", "Recipe B", "Vanilla 2%", "Dark #3", "Süß/Sauer"];
const ODD_TEXTS: &[&str] = &["Ünïcödé ✓", "a+b#c%d", "tab\there", "quote \" and \\"];

/// A signal template: suffix, type, writable, behaviour.
type Signal = (&'static str, TagType, bool, Behaviour);

const fn walk(lo: f64, hi: f64) -> Behaviour {
    Behaviour::Walk { lo, hi }
}

/// Machine signals. The first ten cover every type but the 8-bit ones,
/// which come last, so that a simulator of 19 tags (fewer than 20: no
/// hostile names) has one tag of each type; the 8-bit signals were
/// appended so that the names and order of the first seventeen stayed.
const MACHINE: &[Signal] = &[
    ("Speed", TagType::Double, false, walk(0.0, 3000.0)),
    ("Motor Current", TagType::Float, false, walk(0.0, 50.0)),
    ("Running", TagType::Bool, false, Behaviour::Toggle),
    ("Mode", TagType::Int16, true, walk(0.0, 5.0)),
    (
        "Position",
        TagType::Int32,
        false,
        walk(-100_000.0, 100_000.0),
    ),
    (
        "Energy Total",
        TagType::Int64,
        false,
        Behaviour::Counter { step: 500 },
    ),
    ("Command", TagType::UInt16, true, walk(0.0, 10.0)),
    (
        "Batch Count",
        TagType::UInt32,
        false,
        Behaviour::Counter { step: 3 },
    ),
    ("State", TagType::String, false, Behaviour::Choice(STATES)),
    ("Last Maintenance", TagType::DateTime, false, Behaviour::Now),
    ("Speed Setpoint", TagType::Double, true, walk(0.0, 3000.0)),
    ("Temperature", TagType::Float, false, walk(-20.0, 250.0)),
    ("Fault", TagType::Bool, false, Behaviour::Toggle),
    ("Vibration", TagType::Float, false, walk(0.0, 25.0)),
    ("ErrorCode", TagType::Int16, false, walk(0.0, 999.0)),
    (
        "Operating Hours",
        TagType::UInt32,
        false,
        Behaviour::Counter { step: 1 },
    ),
    ("Recipe", TagType::String, true, Behaviour::Choice(RECIPES)),
    ("Valve Position", TagType::UInt8, true, walk(0.0, 100.0)),
    ("Trim", TagType::Int8, true, walk(-50.0, 50.0)),
];

/// Tank signals, joined with `.` (`Tank3.Level`).
const TANK: &[Signal] = &[
    ("Level", TagType::Float, false, walk(0.0, 100.0)),
    ("Temperature", TagType::Float, false, walk(0.0, 95.0)),
    ("Pressure", TagType::Double, false, walk(0.0, 16.0)),
    ("Level.Setpoint", TagType::Float, true, walk(0.0, 100.0)),
    ("InletValve.Open", TagType::Bool, false, Behaviour::Toggle),
    ("OutletValve.Open", TagType::Bool, false, Behaviour::Toggle),
    ("Agitator.Speed", TagType::Double, false, walk(0.0, 600.0)),
    ("HighAlarm", TagType::Bool, false, Behaviour::Toggle),
    ("Volume", TagType::Int32, false, walk(0.0, 50_000.0)),
    (
        "Fill Count",
        TagType::UInt32,
        false,
        Behaviour::Counter { step: 1 },
    ),
    ("Mode", TagType::Int16, true, walk(0.0, 3.0)),
    ("Last Cleaning", TagType::DateTime, false, Behaviour::Now),
    (
        "Product",
        TagType::String,
        false,
        Behaviour::Choice(RECIPES),
    ),
];

const LINE_MACHINES: &[&str] = &[
    "Mixer",
    "Conveyor",
    "Filler",
    "Oven",
    "Press",
    "Labeler",
    "Palletizer",
    "Pump1",
    "Pump2",
    "Valve3",
    "Cooler",
];
const BOILER_SECTIONS: &[&str] = &["Burner", "Feedwater", "Steam Drum", "Economizer"];
const UTILITIES: &[&str] = &["Compressor", "Chiller", "Transformer"];

/// Hostile names (contract: spaces, `#`, `+`, `%`, odd `/`, unicode,
/// control characters), with their type and writability. Present in every
/// generated population of at least 20 tags.
pub const HOSTILE: &[(&str, TagType, bool)] = &[
    ("Area 51/Motor Current", TagType::Float, false),
    ("Tank #4/Level", TagType::Float, false),
    ("Dosing/A+B Ratio", TagType::Double, false),
    ("Valve 7/Open 100%", TagType::Bool, false),
    ("Kühlung/Temperatur°C", TagType::Float, false),
    ("/Lead", TagType::Int16, false),
    ("Trail/", TagType::Int32, false),
    ("A//B", TagType::UInt16, false),
    ("Ctrl\u{1}Char", TagType::UInt32, false),
    ("Line9/Next\u{85}Line", TagType::Int64, false),
    ("Percent%2FLiteral", TagType::Int64, false),
    ("Quote\"Back\\slash", TagType::String, false),
    ("Query?Param&x=1", TagType::DateTime, false),
    ("Rocket/🚀 Thrust", TagType::Double, false),
    ("Recipe/Step[3]{x}", TagType::Int32, false),
    ("Hostile/Setpoint #1+2% Ü", TagType::Double, true),
    ("Kühlung/Sollwert°C Setpoint", TagType::Float, true),
    ("Wildcard/+/#/Command", TagType::Bool, true),
    ("/Lead/Command", TagType::UInt16, true),
    ("Text/Note #", TagType::String, true),
];

/// Generates `n` tags, deterministic for a given `(n, seed)`.
pub fn generate(n: usize, seed: u64) -> Vec<TagSpec> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6e61_6d65_7321);
    let hostile = if n >= 20 { HOSTILE.len() } else { 0 };
    let regular = n - hostile;
    let mut out = Vec::with_capacity(n);
    let mut seen: HashSet<String> = HOSTILE
        .iter()
        .take(hostile)
        .map(|h| h.0.to_string())
        .collect();
    let (mut lines, mut tanks, mut boilers, mut utils) = (0u32, 0u32, 0u32, 0u32);
    let mut unit = 0usize;
    while out.len() < regular {
        // The first unit is always a production line, so that the first
        // nineteen tags cover every type.
        let kind = if unit == 0 {
            0
        } else {
            rng.random_range(0..20u32)
        };
        let mut batch: Vec<(String, Signal)> = Vec::new();
        match kind {
            0..=9 => {
                lines += 1;
                for m in LINE_MACHINES {
                    for s in MACHINE {
                        batch.push((format!("Line{lines}/{m}/{}", s.0), *s));
                    }
                }
            }
            10..=14 => {
                tanks += 1;
                for s in TANK {
                    batch.push((format!("Tank{tanks}.{}", s.0), *s));
                }
            }
            15..=16 => {
                boilers += 1;
                for sec in BOILER_SECTIONS {
                    for s in &MACHINE[..12] {
                        batch.push((format!("Boiler{boilers}/{sec}/{}", s.0), *s));
                    }
                }
            }
            _ => {
                utils += 1;
                for u in UTILITIES {
                    for s in MACHINE {
                        batch.push((format!("Utilities/{u}{utils}/{}", s.0), *s));
                    }
                }
            }
        }
        unit += 1;
        for (name, (_, ty, writable, behaviour)) in batch {
            if out.len() >= regular {
                break;
            }
            if !seen.insert(name.clone()) {
                continue;
            }
            // About 10 % more writable tags than the Setpoint/Command/Mode ones.
            let writable = writable || rng.random_bool(0.1);
            out.push(TagSpec {
                info: TagInfo { name, ty, writable },
                behaviour,
            });
        }
    }
    for &(name, ty, writable) in HOSTILE.iter().take(hostile) {
        out.push(TagSpec {
            info: TagInfo {
                name: name.to_string(),
                ty,
                writable,
            },
            behaviour: default_behaviour(ty),
        });
    }
    out
}

/// The behaviour given to tags added at run time or with hostile names.
pub fn default_behaviour(ty: TagType) -> Behaviour {
    match ty {
        TagType::Bool => Behaviour::Toggle,
        TagType::Int8 => walk(-100.0, 100.0),
        TagType::UInt8 => walk(0.0, 250.0),
        TagType::Int16 => walk(-1000.0, 1000.0),
        TagType::Int32 => walk(-100_000.0, 100_000.0),
        TagType::Int64 => Behaviour::Counter { step: 100 },
        TagType::UInt16 => walk(0.0, 1000.0),
        TagType::UInt32 => Behaviour::Counter { step: 5 },
        TagType::Float => walk(-50.0, 150.0),
        TagType::Double => walk(0.0, 1000.0),
        TagType::String => Behaviour::Choice(ODD_TEXTS),
        TagType::DateTime => Behaviour::Now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_is_deterministic_unique_and_covers_every_type() {
        let a = generate(5000, 7);
        let b = generate(5000, 7);
        assert_eq!(a.len(), 5000);
        let names_a: Vec<_> = a.iter().map(|t| t.info.clone()).collect();
        let names_b: Vec<_> = b.iter().map(|t| t.info.clone()).collect();
        assert_eq!(names_a, names_b);
        let unique: HashSet<_> = a.iter().map(|t| &t.info.name).collect();
        assert_eq!(unique.len(), 5000);
        for ty in TagType::ALL {
            assert!(a.iter().any(|t| t.info.ty == ty), "{ty} missing");
        }
        for h in HOSTILE {
            assert!(a.iter().any(|t| t.info.name == h.0), "{:?} missing", h.0);
        }
        assert!(a.iter().any(|t| t.info.name.contains('.')));
        let writable = a.iter().filter(|t| t.info.writable).count();
        assert!(writable > 500 && writable < 2500, "{writable} writable");
        let c = generate(5000, 8);
        assert_ne!(
            a.iter().map(|t| t.info.writable).collect::<Vec<_>>(),
            c.iter().map(|t| t.info.writable).collect::<Vec<_>>()
        );
    }

    #[test]
    fn small_populations_cover_every_type_without_hostile_names() {
        let t = generate(19, 1);
        assert_eq!(t.len(), 19);
        for ty in TagType::ALL {
            assert!(t.iter().any(|s| s.info.ty == ty), "{ty} missing");
        }
        assert!(t.iter().all(|s| s.info.name.starts_with("Line1/Mixer/")));
        assert_eq!(generate(0, 1).len(), 0);
        assert_eq!(generate(20, 1).len(), 20);
    }

    #[test]
    fn scales_to_a_hundred_thousand_tags() {
        let t = generate(100_000, 3);
        assert_eq!(t.len(), 100_000);
        let unique: HashSet<_> = t.iter().map(|t| t.info.name.as_str()).collect();
        assert_eq!(unique.len(), 100_000);
    }
}
