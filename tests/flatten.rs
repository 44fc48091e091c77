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
    // Only the fixup writes into a table it imports (the merged module's
    // table of lowered imports, which it fills once the memory exists).
    assert_eq!(after.segments_into_imported_tables, 1, "{after:?}");
    assert!(
        after.function_imports < before.function_imports / 4,
        "{after:?}"
    );
    // And the pipeline runs this flattened component (not the fallback).
    let data_dir = eryx_preinit::default_data_dir();
    let artifacts = eryx::base::ensure_component(&data_dir, &eryx::base::LogProgress).unwrap();
    let running = structure(&std::fs::read(&artifacts.component).unwrap()).unwrap();
    assert_eq!(running, after);
}

/// Python programs whose output does not depend on time or randomness the
/// host provides: the differential test runs each on both components.
const PROGRAMS: &[&str] = &[
    "print(sum(i * i for i in range(10_000)), 2 ** 200, 7 / 3, f'{3.14159:.2f}')",
    "import json; print(json.dumps({'b': [1, 2.5, None, True], 'a': 'é✓'}, sort_keys=True))",
    "import re; print(re.findall(r'(\\w+)@(\\w+)\\.com', 'a@b.com, c@d.com x@y.org'))",
    "import hashlib; print(hashlib.sha256(b'eryx').hexdigest(), hashlib.pbkdf2_hmac('sha256', b'pw', b'salt', 1000).hex())",
    "import zlib, base64; d = zlib.compress(b'abc' * 1000); print(len(d), base64.b64encode(zlib.decompress(d)[:9]))",
    "import decimal, fractions; decimal.getcontext().prec = 40; print(decimal.Decimal(1) / 7, fractions.Fraction(3, 9) + 1)",
    "import random; r = random.Random(42); print([r.randint(0, 99) for _ in range(8)], r.random())",
    "import sqlite3; c = sqlite3.connect(':memory:'); c.execute('create table t(x)'); c.executemany('insert into t values (?)', [(i,) for i in range(100)]); print(c.execute('select sum(x), count(*) from t').fetchone())",
    "import asyncio\nasync def f(i):\n    await asyncio.sleep(0.001 * (5 - i))\n    return i * 10\nasync def main():\n    return await asyncio.gather(*(f(i) for i in range(5)))\nprint(asyncio.run(main()))",
    "import dataclasses\n@dataclasses.dataclass(order=True)\nclass P:\n    x: int\n    y: str = 'z'\nprint(sorted([P(3), P(1, 'a'), P(2)]))",
    "import struct, itertools; print(struct.pack('<IhQ', 1, -2, 3).hex(), list(itertools.permutations('abc', 2)))",
    "import datetime, zoneinfo; t = datetime.datetime(2026, 3, 8, 12, tzinfo=zoneinfo.ZoneInfo('America/New_York')); print(t.astimezone(zoneinfo.ZoneInfo('Asia/Tokyo')).isoformat())",
    "import pickle; print(pickle.loads(pickle.dumps({'k': [1, (2, 3)], 's': {4}})))",
    "with open('/tmp/f.txt', 'w') as f:\n    f.write('line\\n' * 3)\nprint(open('/tmp/f.txt').read().splitlines(), __import__('os').listdir('/tmp'))",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\nprint(fib(22))",
    "import sys; print(sys.version_info[:2], sys.getrecursionlimit(), sys.maxsize)",
    "class E(Exception):\n    pass\ndef g():\n    raise E('boom')\ng()",
    "1/0",
    "x = [1, 2, 3]\nx",
    "import textwrap, statistics; print(textwrap.fill('word ' * 30, 40)); print(statistics.median([5, 1, 4, 2]))",
    "import uuid; print(uuid.UUID('12345678123456781234567812345678').hex, uuid.uuid5(uuid.NAMESPACE_DNS, 'eryx'))",
];

/// What an execute produced, without timings.
fn outcome(result: eryx::Result<eryx::ExecuteResult>) -> String {
    match result {
        Ok(r) => format!(
            "ok stdout={:?} stderr={:?} result={:?} json={:?}",
            r.stdout, r.stderr, r.result, r.result_json
        ),
        Err(eryx::Error::Exception(e) | eryx::Error::Compile(e)) => {
            format!("error {} stdout={:?}", e.traceback, e.stdout)
        }
        Err(other) => format!("error {other}"),
    }
}

/// A runtime for `component` (pre-initialized with the same modules as the
/// base, then compiled), built on a thread of its own.
fn runtime_for(component: std::path::PathBuf, name: &'static str) -> eryx::Runtime {
    std::thread::spawn(move || {
        let data_dir = eryx_preinit::default_data_dir();
        let stdlib = eryx::base::ensure_component(&data_dir, &eryx::base::LogProgress)
            .unwrap()
            .stdlib_dir;
        let engine = eryx_tests::engine();
        let modules: Vec<String> = eryx::base::PRELOAD_MODULES
            .iter()
            .map(|m| (*m).to_owned())
            .collect();
        let wasm = std::fs::read(&component).unwrap();
        let tokio = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let snapshot = tokio
            .block_on(engine.preinitialize(&wasm, &stdlib, &modules))
            .unwrap_or_else(|e| panic!("pre-initializing the {name} component: {e}"));
        let dir = tempfile::tempdir().unwrap().keep();
        let path = dir.join(format!("{name}.wasm"));
        std::fs::write(&path, snapshot).unwrap();
        eryx::Runtime::builder()
            .with_component_file(path)
            .with_stdlib_dir(stdlib)
            .with_engine(&engine)
            .build()
            .unwrap_or_else(|e| panic!("compiling the {name} snapshot: {e}"))
    })
    .join()
    .expect("building a runtime panicked")
}

#[tokio::test]
async fn linked_and_flattened_components_give_the_same_output() {
    let data_dir = eryx_preinit::default_data_dir();
    let artifacts = eryx::base::ensure_component(&data_dir, &eryx::base::LogProgress).unwrap();
    let linked = runtime_for(artifacts.linked.clone(), "linked");
    let flattened = runtime_for(artifacts.component.clone(), "flattened");
    let mut differences = Vec::new();
    for program in PROGRAMS {
        let mut outcomes = Vec::new();
        for runtime in [&linked, &flattened] {
            let sandbox = eryx::Sandbox::builder()
                .with_runtime(runtime)
                .build()
                .unwrap();
            outcomes.push(outcome(sandbox.execute(program).await));
        }
        assert!(
            !outcomes[0].starts_with("error")
                || program.contains("raise")
                || program.contains("1/0"),
            "{program}: {}",
            outcomes[0]
        );
        if outcomes[0] != outcomes[1] {
            differences.push(format!(
                "{program}\n  linked:    {}\n  flattened: {}",
                outcomes[0], outcomes[1]
            ));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}
