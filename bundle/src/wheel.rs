//! CPython 3.14 for WASI, taken from the pinned `componentize-py` wheel on PyPI.
//!
//! The wheel's native extension (`componentize_py/componentize_py.abi3.so`)
//! carries, as zstd frames, the wasm shared libraries CPython needs
//! (`libpython3.14.so`, a wasip2 `libc.so`, libc++, the wasi-emulated libraries),
//! the `wasi_snapshot_preview1` reactor adapter and the Python standard library
//! as a tar. We decompress every frame and identify each by its content: wasm
//! dynamic libraries by the module name in their `name` section, the adapter by
//! its `reset_adapter_state` export, the standard library by its `os.py`.
//! Source of the layout: `../shared/notes/toolchain.md`.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, PythonDist, Result, atomic_dir, sha256_hex};

/// The pip requirement we fetch.
pub const WHEEL_REQUIREMENT: &str = "componentize-py==0.25.1";
/// File name of the wheel (its wasm payload is platform-independent; we pin
/// the x86_64 build so the hash below holds on every host).
pub const WHEEL_FILE: &str = "componentize_py-0.25.1-cp39-abi3-manylinux_2_28_x86_64.whl";
/// The wheel's sha256, as published on PyPI; a download with another hash is refused.
pub const WHEEL_SHA256: &str = "8623cd8cab8453cb0cd8bf03f3c7103420d06f2f3d360186a280a70a1ca5e89f";
/// The wheel member holding the zstd frames.
const PAYLOAD_MEMBER: &str = "componentize_py/componentize_py.abi3.so";

/// The wasm shared libraries the component links, in link order after the guest
/// (`../shared/notes/toolchain.md`, "Linking the component").
pub const LIBRARIES: [&str; 8] = [
    "libpython3.14.so",
    "libc.so",
    "libwasi-emulated-mman.so",
    "libwasi-emulated-process-clocks.so",
    "libwasi-emulated-getpid.so",
    "libwasi-emulated-signal.so",
    "libc++.so",
    "libc++abi.so",
];

/// Returns the wheel in `dir/wheels`, downloading it with pip when absent
/// (at build time: the binary embeds what it needs).
///
/// `ERYX_WHEEL` may name a local copy of the wheel instead (for offline use).
///
/// # Errors
/// [`Error::Fetch`] when pip cannot be run or fails, [`Error::HashMismatch`]
/// when the file's sha256 is not [`WHEEL_SHA256`].
pub fn fetch_wheel(dir: &Path) -> Result<PathBuf> {
    fetch_pinned(
        dir,
        "ERYX_WHEEL",
        (WHEEL_REQUIREMENT, WHEEL_FILE, WHEEL_SHA256),
        &[
            "--platform",
            "manylinux_2_28_x86_64",
            "--python-version",
            "3.11",
        ],
    )
}

/// The pip requirement of the time zone database put into the standard
/// library (the `tzdata` package `zoneinfo` falls back to when the system has
/// no `/usr/share/zoneinfo`, as under WASI).
pub const TZDATA_REQUIREMENT: &str = "tzdata==2025.2";
/// File name of the tzdata wheel (pure Python, data only).
pub const TZDATA_FILE: &str = "tzdata-2025.2-py2.py3-none-any.whl";
/// Its sha256, as published on PyPI.
pub const TZDATA_SHA256: &str = "1a403fada01ff9221ca8044d701868fa132215d84beb92242d9acd2147f667a8";

/// Returns the tzdata wheel in `dir/wheels`, downloading it when absent
/// (`ERYX_TZDATA_WHEEL` may name a local copy).
///
/// # Errors
/// As [`fetch_wheel`], against [`TZDATA_SHA256`].
pub fn fetch_tzdata(dir: &Path) -> Result<PathBuf> {
    fetch_pinned(
        dir,
        "ERYX_TZDATA_WHEEL",
        (TZDATA_REQUIREMENT, TZDATA_FILE, TZDATA_SHA256),
        &[],
    )
}

fn fetch_pinned(
    dir: &Path,
    variable: &str,
    (requirement, file, sha256): (&str, &str, &str),
    platform: &[&str],
) -> Result<PathBuf> {
    if let Some(local) = std::env::var_os(variable) {
        let local = PathBuf::from(local);
        verify(&local, sha256)?;
        return Ok(local);
    }
    let wheels = dir.join("wheels");
    let path = wheels.join(file);
    if path.exists() && verify(&path, sha256).is_ok() {
        return Ok(path);
    }
    fs::create_dir_all(&wheels)?;
    let tmp = tempfile::tempdir_in(&wheels)?;
    let python = std::env::var("ERYX_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let output = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:"])
        .args(platform)
        .arg("--dest")
        .arg(tmp.path())
        .arg(requirement)
        .output()
        .map_err(|e| Error::Fetch(format!("could not run `{python} -m pip` ({e}); install Python 3 with pip, or set {variable} to a downloaded {file}")))?;
    if !output.status.success() {
        return Err(Error::Fetch(format!(
            "`{python} -m pip download {requirement}` failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let downloaded = tmp.path().join(file);
    verify(&downloaded, sha256)?;
    fs::rename(&downloaded, &path)?;
    Ok(path)
}

fn verify(path: &Path, expected: &str) -> Result<()> {
    let bytes =
        fs::read(path).map_err(|e| Error::Fetch(format!("cannot read {}: {e}", path.display())))?;
    let actual = sha256_hex(&bytes);
    if actual != expected {
        return Err(Error::HashMismatch {
            what: path.display().to_string(),
            algorithm: "sha256",
            expected: expected.to_owned(),
            actual,
        });
    }
    Ok(())
}

/// Bumped when [`ensure_extracted`] lays the distribution out differently
/// from the same wheels.
const LAYOUT: &str = "eryx-dist-v2";

/// Fetches (if needed) and extracts the distribution into
/// `dir/python/<hash of the inputs>`; a complete extraction is reused. The
/// standard library gets the `tzdata` package (from [`fetch_tzdata`]) and a
/// repaired `CONFIG_ARGS` (see [`repair_config_args`]).
///
/// # Errors
/// As [`fetch_wheel`]; [`Error::Extract`] when the wheel lacks a part we need.
pub fn ensure_extracted(dir: &Path) -> Result<PythonDist> {
    let key = sha256_hex(format!("{LAYOUT}\0{WHEEL_SHA256}\0{TZDATA_SHA256}").as_bytes());
    let out = dir.join("python").join(&key[..16]);
    let dist = PythonDist { dir: out.clone() };
    if out.join(crate::ADAPTER_FILE).exists() {
        return Ok(dist);
    }
    let wheel = fetch_wheel(dir)?;
    let tzdata = fetch_tzdata(dir)?;
    atomic_dir(&out, |tmp| {
        extract(&wheel, tmp)?;
        add_tzdata(&tzdata, &tmp.join("stdlib"))?;
        repair_config_args(&tmp.join("stdlib"))
    })?;
    Ok(dist)
}

/// Unpacks the tzdata wheel (its `tzdata/` package and dist-info) into the
/// standard library directory `stdlib`.
fn add_tzdata(wheel: &Path, stdlib: &Path) -> Result<()> {
    let mut archive = zip::ZipArchive::new(fs::File::open(wheel)?)
        .map_err(|e| Error::Extract(format!("{}: {e}", wheel.display())))?;
    for i in 0..archive.len() {
        let mut entry = archive
            .by_index(i)
            .map_err(|e| Error::Extract(format!("{}: {e}", wheel.display())))?;
        let Some(path) = entry.enclosed_name() else {
            return Err(Error::Extract(format!(
                "{}: a path outside the wheel",
                wheel.display()
            )));
        };
        if entry.is_dir() {
            continue;
        }
        let target = stdlib.join(path);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut contents = Vec::new();
        entry.read_to_end(&mut contents)?;
        fs::write(target, contents)?;
    }
    Ok(())
}

/// The `CONFIG_ARGS` the pinned build records is cut off inside a quote
/// (`'--build=x86_64-pc-linux-gnu` without its closing `'`), so
/// `shlex.split(sysconfig.get_config_var("CONFIG_ARGS"))` fails. Closes the
/// quote in the two files that carry the build variables; a build whose value
/// is already whole is left alone.
fn repair_config_args(stdlib: &Path) -> Result<()> {
    const CUT: &str = "'-C' '--host=wasm32-unknown-wasip2' '--build=x86_64-pc-linux-gnu";
    for name in [
        "_sysconfigdata__wasi_wasm32-wasi.py",
        "_sysconfig_vars__wasi_wasm32-wasi.json",
    ] {
        let path = stdlib.join(name);
        let Ok(text) = fs::read_to_string(&path) else {
            continue;
        };
        let fixed = text.replace(&format!("\"{CUT}\""), &format!("\"{CUT}'\""));
        if fixed != text {
            fs::write(&path, fixed)?;
        }
    }
    Ok(())
}

/// What one decompressed frame turned out to be.
enum Part {
    Library(String),
    Adapter,
    Stdlib,
    Other,
}

fn extract(wheel: &Path, out: &Path) -> Result<()> {
    let file = fs::File::open(wheel)?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::Extract(format!("{}: {e}", wheel.display())))?;
    let mut payload = Vec::new();
    archive
        .by_name(PAYLOAD_MEMBER)
        .map_err(|e| Error::Extract(format!("{PAYLOAD_MEMBER} in the wheel: {e}")))?
        .read_to_end(&mut payload)?;

    let mut found = BTreeMap::new();
    let lib_dir = out.join("lib");
    fs::create_dir_all(&lib_dir)?;
    for frame in zstd_frames(&payload) {
        match identify(&frame) {
            Part::Library(name) if LIBRARIES.contains(&name.as_str()) => {
                fs::write(lib_dir.join(&name), &frame)?;
                found.insert(name, ());
            }
            Part::Adapter => {
                fs::write(out.join(crate::ADAPTER_FILE), &frame)?;
                found.insert(crate::ADAPTER_FILE.to_owned(), ());
            }
            Part::Stdlib => {
                tar::Archive::new(Cursor::new(&frame)).unpack(out.join("stdlib"))?;
                found.insert("stdlib".to_owned(), ());
            }
            Part::Library(_) | Part::Other => {}
        }
    }
    let missing: Vec<&str> = LIBRARIES
        .iter()
        .copied()
        .chain([crate::ADAPTER_FILE, "stdlib"])
        .filter(|name| !found.contains_key(*name))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Extract(format!(
            "the wheel does not contain {}",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// Decompresses every zstd frame embedded in `data`. The magic number can also
/// occur by chance inside the ELF file; such false starts fail to decode and
/// are skipped.
fn zstd_frames(data: &[u8]) -> Vec<Vec<u8>> {
    const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some(offset) = data[at..].windows(4).position(|w| w == MAGIC) {
        let start = at + offset;
        let rest = &data[start..];
        match zstd::zstd_safe::find_frame_compressed_size(rest) {
            Ok(size) if size <= rest.len() => {
                let mut decoded = Vec::new();
                let decoder = zstd::stream::read::Decoder::with_buffer(&rest[..size]);
                if let Ok(mut decoder) = decoder
                    && decoder.read_to_end(&mut decoded).is_ok()
                {
                    frames.push(decoded);
                    at = start + size;
                    continue;
                }
                at = start + 1;
            }
            _ => at = start + 1,
        }
    }
    frames
}

fn identify(bytes: &[u8]) -> Part {
    if bytes.starts_with(b"\0asm") {
        return identify_wasm(bytes).unwrap_or(Part::Other);
    }
    if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        let mut archive = tar::Archive::new(Cursor::new(bytes));
        if let Ok(entries) = archive.entries() {
            for entry in entries.flatten() {
                if entry.path().is_ok_and(|p| p == Path::new("os.py")) {
                    return Part::Stdlib;
                }
            }
        }
    }
    Part::Other
}

fn identify_wasm(bytes: &[u8]) -> Option<Part> {
    use wasmparser::{Name, NameSectionReader, Parser, Payload};
    let mut module_name = None;
    let mut dylib = false;
    let mut reset_export = false;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::ExportSection(reader) => {
                for export in reader {
                    if export.ok()?.name == "reset_adapter_state" {
                        reset_export = true;
                    }
                }
            }
            Payload::CustomSection(section) if section.name() == "dylink.0" => dylib = true,
            Payload::CustomSection(section) if section.name() == "name" => {
                let reader = NameSectionReader::new(wasmparser::BinaryReader::new(
                    section.data(),
                    section.data_offset(),
                ));
                for name in reader {
                    if let Ok(Name::Module { name, .. }) = name {
                        module_name = Some(name.to_owned());
                    }
                }
            }
            _ => {}
        }
    }
    Some(match (dylib, module_name, reset_export) {
        (true, Some(name), _) => Part::Library(name),
        (false, _, true) => Part::Adapter,
        _ => Part::Other,
    })
}
