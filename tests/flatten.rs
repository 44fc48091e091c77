//! The flattening pass (`eryx::base::flatten`) on the real linked component:
//! its structure, and the same Python programs giving the same output on the
//! linked and the flattened component.

use eryx::base::flatten::{flatten, structure};

fn linked_component() -> Vec<u8> {
    let data_dir = eryx_preinit::default_data_dir();
    let artifacts = eryx::base::ensure_component(&data_dir, &eryx::base::LogProgress)
        .expect("linking the component");
    std::fs::read(&artifacts.linked).expect("reading the linked component")
}

#[test]
fn flattened_component_has_one_code_module_and_no_eager_table_segments() {
    let linked = linked_component();
    let before = structure(&linked).unwrap();
    let flat = flatten(&linked).unwrap();
    let after = structure(&flat.component).unwrap();
    eprintln!(
        "linked: {before:?}\nflattened: {after:?}\nmerged {} kept {} imports {}",
        flat.merged_instances, flat.kept_instances, flat.imports
    );
    assert!(before.modules_with_code > 5, "{before:?}");
    assert!(before.segments_at_computed_offsets > 0, "{before:?}");
    // The merged module, the starter (no code of its own: it calls the
    // merged start) and wit-component's fixup (no code: one segment).
    assert_eq!(after.modules_with_code, 1, "{after:?}");
    assert_eq!(after.segments_at_computed_offsets, 0, "{after:?}");
}
