//! Each instance's private, in-memory, size-capped `/tmp` and working
//! directory `/work`: real CPython file I/O against the host's tree.

use eryx_tests::{run, runtime};

#[tokio::test]
async fn files_are_written_read_listed_and_deleted_in_tmp_and_the_working_directory() {
    let result = run(r#"
import os
with open("/tmp/a.txt", "w") as f:
    f.write("hello\n" * 1000)
with open("/tmp/a.txt", "a") as f:
    f.write("end")
data = open("/tmp/a.txt").read()
os.mkdir("/tmp/sub")
open("/tmp/sub/b.bin", "wb").write(bytes(range(256)))
listing = sorted(os.listdir("/tmp")), os.listdir("/tmp/sub")
os.rename("/tmp/sub/b.bin", "/tmp/c.bin")
moved = open("/tmp/c.bin", "rb").read() == bytes(range(256))
os.remove("/tmp/a.txt")
os.rmdir("/tmp/sub")
open("here.txt", "w").write("cwd")
(len(data), data.endswith("hello\nend"), listing, moved, sorted(os.listdir("/tmp")),
 os.getcwd(), open("/work/here.txt").read(), os.path.getsize("/tmp/c.bin"))
"#)
    .await;
    assert_eq!(
        result.result.as_deref(),
        Some("(6003, True, (['a.txt', 'sub'], ['b.bin']), True, ['c.bin'], '/work', 'cwd', 256)"),
        "{result:?}"
    );
}

#[tokio::test]
async fn tempfile_shutil_zipfile_and_sqlite_work_on_the_in_memory_filesystem() {
    let result = run(r#"
import os, shutil, sqlite3, tempfile, zipfile
with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "x.zip")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("inner.txt", "zipped")
    shutil.copy(path, "/tmp/copy.zip")
    zipped = zipfile.ZipFile("/tmp/copy.zip").read("inner.txt").decode()
    inside = os.listdir(d)
gone = os.path.exists(d)
with tempfile.NamedTemporaryFile("w+", delete=True) as f:
    f.write("temp")
    f.seek(0)
    temp = f.read()
db = sqlite3.connect("/tmp/db.sqlite")
db.execute("create table t (x integer)")
db.executemany("insert into t values (?)", [(i,) for i in range(100)])
db.commit()
db.close()
total = sqlite3.connect("/tmp/db.sqlite").execute("select sum(x) from t").fetchone()[0]
(tempfile.gettempdir(), zipped, inside, gone, temp, total)
"#)
    .await;
    assert_eq!(
        result.result.as_deref(),
        Some("('/tmp', 'zipped', ['x.zip'], False, 'temp', 4950)"),
        "{result:?}"
    );
}

#[tokio::test]
async fn the_standard_library_stays_read_only() {
    let result = run(r#"
import errno, os
codes = []
for path in ["/python/os.py", "/python/new.py"]:
    try:
        open(path, "a").write("x")
        codes.append("written")
    except OSError as e:
        codes.append(errno.errorcode.get(e.errno, e.errno))
codes
"#)
    .await;
    let text = result.result.unwrap_or_default();
    assert!(!text.contains("written"), "{text}");
}

#[tokio::test]
async fn writing_past_the_byte_cap_fails_and_the_instance_keeps_working() {
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_filesystem_limits(eryx::FsLimits {
            max_bytes: 1 << 20,
            max_files: 100,
        })
        .build()
        .unwrap();
    let result = sandbox
        .execute(
            r#"
import errno, os
f = open("/tmp/big", "wb", buffering=0)
written = 0
try:
    for _ in range(100):
        written += f.write(b"x" * 100000)
except OSError as e:
    code = errno.errorcode[e.errno]
f.close()
size = os.path.getsize("/tmp/big")
try:
    os.truncate("/tmp/big", 2 << 20)
except OSError as e:
    code_truncate = errno.errorcode[e.errno]
os.remove("/tmp/big")
files = 0
try:
    for i in range(200):
        open(f"/tmp/f{i}", "w").close()
        files += 1
except OSError as e:
    code_files = errno.errorcode[e.errno]
for i in range(files):
    os.remove(f"/tmp/f{i}")
open("/tmp/after", "w").write("ok")
(code, written, size, code_truncate, code_files, files, open("/tmp/after").read())
"#,
        )
        .await
        .unwrap();
    // Ten writes fit; the eleventh is short, filling the file exactly to the
    // cap; the twelfth fails, which wasi-libc reports as EIO. Truncating past the
    // cap and creating past the count are ENOSPC. The two roots count as
    // nodes: 98 files fit under 100.
    assert_eq!(
        result.result.as_deref(),
        Some("('EIO', 1048576, 1048576, 'ENOSPC', 'ENOSPC', 98, 'ok')"),
        "{result:?}"
    );
}

#[tokio::test]
async fn two_instances_cannot_see_each_others_files() {
    let sandbox = eryx_tests::sandbox();
    let (a, b) = tokio::join!(
        sandbox.execute(
            "import os, time\nopen('/tmp/mine', 'w').write('a')\nopen('/work/w', 'w').write('a')\nsorted(os.listdir('/tmp')), sorted(os.listdir('.'))"
        ),
        sandbox.execute("import os\nos.listdir('/tmp'), os.listdir('/work')"),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.result.as_deref(), Some("(['mine'], ['w'])"));
    assert_eq!(b.result.as_deref(), Some("([], [])"));
    // A later instance starts empty too.
    let c = sandbox
        .execute("import os\nos.listdir('/tmp')")
        .await
        .unwrap();
    assert_eq!(c.result.as_deref(), Some("[]"));
}

#[tokio::test]
async fn a_session_keeps_its_files_and_a_state_snapshot_carries_them() {
    let sandbox = eryx_tests::sandbox();
    let mut session = sandbox.session().await.unwrap();
    session
        .execute("import os\nos.makedirs('/tmp/d/e')\nopen('/tmp/d/e/f.txt', 'w').write('kept')\nopen('notes', 'w').write('n')\nx = 1")
        .await
        .unwrap();
    let later = session
        .execute("open('/tmp/d/e/f.txt').read(), open('notes').read()")
        .await
        .unwrap();
    assert_eq!(later.result.as_deref(), Some("('kept', 'n')"));
    let snapshot = session.snapshot_state().await.unwrap();

    let mut fresh = sandbox.session().await.unwrap();
    fresh.restore_state(&snapshot).await.unwrap();
    let restored = fresh
        .execute("open('/tmp/d/e/f.txt').read(), open('/work/notes').read(), x")
        .await
        .unwrap();
    assert_eq!(restored.result.as_deref(), Some("('kept', 'n', 1)"));

    // And through a stateless call with the state passed along.
    let with_state = sandbox
        .execute_with_state(
            Some(&snapshot.data),
            "open('/tmp/d/e/f.txt').read() + str(x)",
        )
        .await
        .unwrap();
    assert_eq!(with_state.output.result.as_deref(), Some("'kept1'"));
}

#[tokio::test]
async fn nothing_is_written_to_the_host_disk() {
    // The host's own temporary directory and data directory stay untouched
    // by a guest writing a uniquely named file.
    let marker = format!("eryx-memfs-{}", std::process::id());
    let result = run(&format!(
        "import os\nopen('/tmp/{marker}', 'w').write('x' * 100000)\nos.makedirs('/work/{marker}/d')\nos.path.exists('/tmp/{marker}')"
    ))
    .await;
    assert_eq!(result.result.as_deref(), Some("True"));
    let host_tmp = std::env::temp_dir();
    assert!(!host_tmp.join(&marker).exists());
    let found = std::process::Command::new("find")
        .args([
            host_tmp.as_os_str(),
            "-xdev".as_ref(),
            "-name".as_ref(),
            marker.as_ref(),
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&found.stdout).trim().is_empty(),
        "found on the host: {}",
        String::from_utf8_lossy(&found.stdout)
    );
}

#[tokio::test]
async fn links_long_names_trailing_slashes_and_removed_directories_are_refused_like_posix() {
    let sandbox = eryx::Sandbox::builder()
        .with_runtime(runtime())
        .with_filesystem_limits(eryx::FsLimits {
            max_bytes: 1 << 20,
            max_files: 1_000,
        })
        .build()
        .unwrap();
    let result = sandbox
        .execute(
            r#"
import errno, os
def code(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, e.errno)
open("/tmp/f", "w").write("x")
out = {
    "hard_link": code(lambda: os.link("/tmp/f", "/tmp/g")),
    "symlink": code(lambda: os.symlink("/tmp/f", "/tmp/s")),
    "long_name": code(lambda: open("/tmp/" + "n" * 256, "w")),
    "unlink_file_slash": code(lambda: os.unlink("/tmp/f/")),
    "open_file_dot": code(lambda: open("/tmp/f/.")),
}
# A file that fills the cap exactly is written whole.
out["exact_fill"] = code(lambda: open("/tmp/full", "wb").write(b"x" * ((1 << 20) - 1)))
out["full_size"] = os.path.getsize("/tmp/full")
os.remove("/tmp/full")
# An open directory that was removed takes no new entries.
os.mkdir("/tmp/d")
fd = os.open("/tmp/d", os.O_RDONLY)
os.rmdir("/tmp/d")
out["create_in_removed"] = code(lambda: os.open("x", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
os.close(fd)
# Deep nesting is fine, and still snapshots (below).
os.makedirs("/tmp/" + "/".join(["a"] * 400))
out
"#,
        )
        .await
        .unwrap();
    assert_eq!(
        result.result.as_deref(),
        Some(
            "{'hard_link': 'EPERM', 'symlink': 'EPERM', 'long_name': 'ENAMETOOLONG', \
             'unlink_file_slash': 'ENOTDIR', 'open_file_dot': 'ENOTDIR', 'exact_fill': 'ok', \
             'full_size': 1048575, 'create_in_removed': 'ENOENT'}"
        ),
        "{result:?}"
    );
    let mut session = sandbox.session().await.unwrap();
    session
        .execute("import os\nos.makedirs('/tmp/' + '/'.join(['a'] * 900))\nopen('/tmp/' + '/'.join(['a'] * 900) + '/leaf', 'w').write('deep')")
        .await
        .unwrap();
    let snapshot = session.snapshot_state().await.unwrap();
    let mut fresh = sandbox.session().await.unwrap();
    fresh.restore_state(&snapshot).await.unwrap();
    let deep = fresh
        .execute("open('/tmp/' + '/'.join(['a'] * 900) + '/leaf').read()")
        .await
        .unwrap();
    assert_eq!(deep.result.as_deref(), Some("'deep'"));
}
