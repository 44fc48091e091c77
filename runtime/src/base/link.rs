//! Linking guest + CPython + libc + the preview1 adapter into one component.
//!
//! The `wit-dylib` crate generates, from `wit/sandbox.wit`, a small core module
//! (the "bindings") that implements the world's canonical ABI and calls into
//! the guest through the `wit_dylib.h` interpreter ABI. `wit-component`'s
//! [`Linker`](wit_component::Linker) then resolves the shared libraries against
//! each other and wraps them in a component. Order and flags from
//! `../shared/notes/toolchain.md`, "Linking the component".

use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wit_parser::Resolve;

use super::dist::{LIBRARIES, PythonDist};
use super::{Progress, WIT, atomic_write, embedded};
use crate::{Error, Result};

/// Bumped whenever the way we link or flatten changes, so old cached
/// components are not reused (v3: the component is flattened after linking; v4: only the exports it uses; v5: libraries' own starts allowed).
const LINK_RECIPE: &str = "eryx-link-v5-flattened";

/// Name of the bindings library inside the component.
const BINDINGS_NAME: &str = "liberyx_bindings.so";

/// Parses the WIT world; returns the resolve and the `sandbox` world.
///
/// # Errors
/// [`Error::Link`] when the WIT does not parse (a bug in `wit/sandbox.wit`).
pub fn world() -> Result<(Resolve, wit_parser::WorldId)> {
    let mut resolve = Resolve::default();
    let package = resolve
        .push_source("sandbox.wit", WIT)
        .map_err(|e| Error::Link(format!("wit/sandbox.wit: {e:#}")))?;
    let world = resolve
        .select_world(&[package], Some("sandbox"))
        .map_err(|e| Error::Link(format!("wit/sandbox.wit: {e:#}")))?;
    Ok((resolve, world))
}

/// Generates the `wit-dylib` bindings module, with the component-type metadata
/// embedded (the generator does not embed it itself).
///
/// The imports `invoke` and `sleep` are lowered asynchronously (Python keeps
/// several in flight and waits on them with `waitable-set.wait`); every other
/// function, the exports included, uses the synchronous canonical ABI, which
/// the component model allows for `async` function types (see the world's
/// header comment for why the exports are not callback-lifted).
fn bindings() -> Result<Vec<u8>> {
    let (resolve, world) = world()?;
    let mut opts = wit_dylib::DylibOpts {
        interpreter: Some(eryx_bundle::guest::LIBRARY_NAME.to_owned()),
        async_: async_filter(),
    };
    let mut module = wit_dylib::create(&resolve, world, Some(&mut opts));
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )
    .map_err(|e| Error::Link(format!("embedding component metadata: {e:#}")))?;
    Ok(module)
}

/// Which functions wit-dylib binds asynchronously: the two imports Python
/// awaits, nothing else. Directives apply in order, so the catch-all is last.
fn async_filter() -> wit_dylib::AsyncFilterSet {
    let mut filter = wit_dylib::AsyncFilterSet::default();
    filter.push("import:invoke");
    filter.push("import:sleep");
    filter.push("-all");
    filter
}

/// The key of the component this binary links: sha256 over the link recipe,
/// the WIT world, and the embedded guest and CPython distribution (their
/// hashes, computed at build time). Cheap: no file is read.
pub fn component_key() -> String {
    let mut hasher = Sha256::new();
    for part in [
        LINK_RECIPE,
        WIT,
        embedded::GUEST_SHA256,
        embedded::DIST_SHA256,
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// Returns the cached component, linking and flattening it when absent.
///
/// Returns the path of the flattened component (what runs,
/// `components/{key}.wasm`), the path of the linked one it was made from
/// (`components/{key}-linked.wasm`, kept for comparison), the key
/// ([`component_key`]) and whether anything was built now.
///
/// # Errors
/// [`Error::Link`] when `wit-component` rejects the libraries or the
/// flattening pass refuses the linked component; I/O errors.
pub fn ensure_component(
    data_dir: &Path,
    dist: &PythonDist,
    progress: &dyn Progress,
) -> Result<(PathBuf, PathBuf, String, bool)> {
    let key = component_key();
    let dir = data_dir.join("components");
    let flat_path = dir.join(format!("{key}.wasm"));
    let linked_path = dir.join(format!("{key}-linked.wasm"));
    if flat_path.exists() && linked_path.exists() {
        return Ok((flat_path, linked_path, key, false));
    }

    let linked = if linked_path.exists() {
        fs::read(&linked_path)?
    } else {
        progress.step("linking the component");
        let linked = link(dist)?;
        atomic_write(&linked_path, &linked)?;
        progress.done(&format!(
            "linked the component ({:.1} MB)",
            linked.len() as f64 / 1e6
        ));
        linked
    };
    progress.step("flattening the component into one core module");
    match super::flatten::flatten(&linked) {
        Ok(flat) => {
            atomic_write(&flat_path, &flat.component)?;
            progress.done(&format!(
                "flattened {} core instances into one module ({:.1} MB)",
                flat.merged_instances,
                flat.component.len() as f64 / 1e6
            ));
        }
        // A shape the pass does not merge (say, a WIT change that exports a
        // resource with a destructor): the linked component runs as it is,
        // only slower to instantiate.
        Err(super::flatten::FlattenError::Unsupported(why)) => {
            tracing::warn!("not flattened, running the linked component: {why}");
            atomic_write(&flat_path, &linked)?;
            progress.done("kept the linked component (not flattened)");
        }
        Err(e) => return Err(Error::Link(format!("flattening the linked component: {e}"))),
    }
    Ok((flat_path, linked_path, key, true))
}

/// Links guest + CPython + libc + adapter with `wit-component`.
fn link(dist: &PythonDist) -> Result<Vec<u8>> {
    let bindings = bindings()?;
    let mut linker = wit_component::Linker::default()
        .validate(true)
        .use_built_in_libdl(true)
        .library(eryx_bundle::guest::LIBRARY_NAME, embedded::GUEST, false)
        .map_err(link_error)?;
    for name in LIBRARIES {
        linker = linker
            .library(name, &fs::read(dist.library(name))?, false)
            .map_err(link_error)?;
    }
    linker
        .library(BINDINGS_NAME, &bindings, false)
        .map_err(link_error)?
        .adapter("wasi_snapshot_preview1", &fs::read(dist.adapter())?)
        .map_err(link_error)?
        .encode()
        .map_err(link_error)
}

fn link_error(e: impl std::fmt::Display) -> Error {
    Error::Link(format!("{e:#}"))
}
