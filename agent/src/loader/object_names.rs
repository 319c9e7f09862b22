//! The map and program names inside the built eBPF object against the ones the loader pins
//! and attaches. The kernel side names its maps in `#[map(name = "...")]` attributes, which
//! take only a literal, so `sockmesh-common`'s constants cannot be used there; this test is
//! what keeps the two spellings one definition: a map renamed on one side, or a map or
//! program added without the loader knowing, fails here, without root.

use std::collections::BTreeSet;

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

use super::{EBPF_OBJECT, MAPS, PROGRAMS};

/// Names of the symbols defined in sections accepted by `section`.
fn symbols(kind: SymbolKind, section: impl Fn(&str) -> bool) -> BTreeSet<String> {
    let file = object::File::parse(EBPF_OBJECT).expect("the built eBPF object parses as ELF");
    file.symbols()
        .filter(|s| s.kind() == kind && s.is_global())
        .filter(|s| {
            s.section_index()
                .and_then(|i| file.section_by_index(i).ok())
                .and_then(|sec| sec.name().ok().map(&section))
                .unwrap_or(false)
        })
        .filter_map(|s| s.name().ok().map(str::to_owned))
        .collect()
}

#[test]
fn every_map_in_the_object_is_one_the_loader_pins() {
    let in_object = symbols(SymbolKind::Data, |name| name == "maps");
    let loaded: BTreeSet<String> = MAPS.iter().map(|m| (*m).to_owned()).collect();
    assert_eq!(
        in_object, loaded,
        "map names in ebpf/programs (#[map(name)]) and the loader's MAPS (sockmesh-common) differ"
    );
}

#[test]
fn every_program_in_the_object_is_one_the_loader_attaches() {
    // Programs live in sections named after their type (`cgroup/connect4`, `sockops`, ...);
    // helpers the compiler kept out of line would be in `.text`.
    let in_object = symbols(SymbolKind::Text, |name| name != ".text");
    let attached: BTreeSet<String> = PROGRAMS.iter().map(|(p, _)| (*p).to_owned()).collect();
    assert_eq!(
        in_object, attached,
        "programs in ebpf/programs and the loader's PROGRAMS (sockmesh-common) differ"
    );
}
