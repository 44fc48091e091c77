//! Sessions and state snapshots: pickling the user's globals and back.

use eryx::Error;
use eryx_tests::sandbox;

const DEFINE: &str = r#"
import json
count = 42
name = "eryx"
table = {"a": [1, 2, {"b": None}], "t": (1.5, True)}
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def norm2(self):
        return self.x ** 2 + self.y ** 2
class Point3(Point):
    def __init__(self, x, y, z):
        super().__init__(x, y)
        self.z = z
    def norm2(self):
        return super().norm2() + self.z ** 2
p = Point(3, 4)
q = Point3(1, 2, 2)
def area(r, scale=2):
    return round(scale * 3.14159 * r * r, 2)
def make_adder(n):
    def add(x):
        return x + n
    return add
add5 = make_adder(5)
"#;

const CHECK: &str = "(count, name, table, p.norm2(), q.norm2(), isinstance(q, Point), area(1), add5(1), json.dumps([1]))";
const EXPECTED: &str =
    "(42, 'eryx', {'a': [1, 2, {'b': None}], 't': (1.5, True)}, 25, 9, True, 6.28, 6, '[1]')";

#[tokio::test]
async fn session_keeps_globals_between_executes() {
    let mut session = sandbox().session().await.unwrap();
    session.execute("x = 20").await.unwrap();
    session.execute("x += 1").await.unwrap();
    assert_eq!(
        session.execute("x * 2").await.unwrap().result.as_deref(),
        Some("42")
    );
}

#[tokio::test]
async fn snapshot_clear_restore_round_trip() {
    let mut session = sandbox().session().await.unwrap();
    session.execute(DEFINE).await.unwrap();
    assert_eq!(
        session.execute(CHECK).await.unwrap().result.as_deref(),
        Some(EXPECTED)
    );

    let snapshot = session.snapshot_state().await.unwrap();
    assert!(
        snapshot.skipped.is_empty(),
        "skipped: {:?}",
        snapshot.skipped
    );

    session.clear_state().await.unwrap();
    let error = session.execute("count").await.unwrap_err();
    assert_eq!(error.python().unwrap().type_name, "NameError");

    session.restore_state(&snapshot).await.unwrap();
    assert_eq!(
        session.execute(CHECK).await.unwrap().result.as_deref(),
        Some(EXPECTED)
    );
}

#[tokio::test]
async fn snapshot_restores_into_a_fresh_instance() {
    let sandbox = sandbox();
    let mut first = sandbox.session().await.unwrap();
    first.execute(DEFINE).await.unwrap();
    let snapshot = first.snapshot_state().await.unwrap();
    drop(first);

    let mut second = sandbox.session().await.unwrap();
    second.restore_state(&snapshot).await.unwrap();
    assert_eq!(
        second.execute(CHECK).await.unwrap().result.as_deref(),
        Some(EXPECTED)
    );
    // Classes restored by value still work as classes: new instances, methods.
    let result = second
        .execute("Point(6, 8).norm2(), type(p) is Point")
        .await
        .unwrap();
    assert_eq!(result.result.as_deref(), Some("(100, True)"));
}

#[tokio::test]
async fn unpicklable_globals_are_skipped_and_named() {
    let mut session = sandbox().session().await.unwrap();
    session
        .execute(
            "keep = [1, 2]\ngen = (i for i in range(3))\nfh = open('/python/os.py')\nalso = 'kept'",
        )
        .await
        .unwrap();
    let snapshot = session.snapshot_state().await.unwrap();
    let mut skipped = snapshot.skipped.clone();
    skipped.sort();
    assert_eq!(skipped, ["fh", "gen"]);

    let mut fresh = sandbox().session().await.unwrap();
    fresh.restore_state(&snapshot).await.unwrap();
    let result = fresh
        .execute("keep, also, 'gen' in globals()")
        .await
        .unwrap();
    assert_eq!(result.result.as_deref(), Some("([1, 2], 'kept', False)"));
}

#[tokio::test]
async fn corrupt_snapshot_is_refused_and_state_kept() {
    let mut session = sandbox().session().await.unwrap();
    session.execute("value = 'precious'").await.unwrap();
    let good = session.snapshot_state().await.unwrap();
    let mut bad = good.clone();
    bad.data.truncate(bad.data.len() / 2);
    let error = session.restore_state(&bad).await.unwrap_err();
    assert!(matches!(error, Error::State(_)), "{error:?}");
    assert_eq!(
        session.execute("value").await.unwrap().result.as_deref(),
        Some("'precious'")
    );
}

#[tokio::test]
async fn state_passed_between_fresh_instances_carries_globals_and_a_failure_returns_none() {
    let sandbox = sandbox();
    let first = sandbox
        .execute_with_state(None, "def inc(v):\n    return v + 1\ncount = inc(0)")
        .await
        .unwrap();
    assert!(first.state.skipped.is_empty());
    assert_eq!(first.restore_time, std::time::Duration::ZERO);
    // A second, fresh instance: only the passed state connects them.
    let second = sandbox
        .execute_with_state(Some(&first.state.data), "count = inc(count)\ncount")
        .await
        .unwrap();
    assert_eq!(second.output.result.as_deref(), Some("2"));
    // A failed call returns no state; the caller keeps the one it had.
    let failed = sandbox
        .execute_with_state(
            Some(&second.state.data),
            "count = 100\nraise ValueError('no')",
        )
        .await
        .unwrap_err();
    assert!(matches!(failed, Error::Exception(_)), "{failed:?}");
    let third = sandbox
        .execute_with_state(Some(&second.state.data), "count")
        .await
        .unwrap();
    assert_eq!(third.output.result.as_deref(), Some("2"));
    // Over the state limit: its own error.
    let small = eryx::Sandbox::builder()
        .with_runtime(eryx_tests::runtime())
        .with_state_limit_bytes(1 << 10)
        .build()
        .unwrap();
    let error = small
        .execute_with_state(None, "big = 'x' * 10_000")
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::StateTooLarge { limit: 1024, .. }),
        "{error:?}"
    );
}
