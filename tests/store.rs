//! The store against a real S3-compatible server (moto): conditional puts
//! are enforced by the server, so replicas on one bucket cannot both win.

use eryx_store::{Condition, Error, Store};
use eryx_tests::S3Server;

fn store(server: &S3Server, bucket: &str) -> Store {
    server.create_bucket(bucket);
    Store::open(
        &format!("s3://{bucket}/prefix"),
        &eryx_tests::signing_key(),
        server.options(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_refuses_a_create_over_an_object_and_a_put_on_a_stale_etag() {
    let server = S3Server::start();
    let store = store(&server, "eryx-conditional");
    let first = store.put_if("head", "1", Condition::Create).await.unwrap();
    let refused = store.put_if("head", "x", Condition::Create).await;
    assert!(
        matches!(refused, Err(Error::Conflict { .. })),
        "{refused:?}"
    );
    let (_, read) = store.get_tagged("head").await.unwrap().unwrap();
    assert_eq!(read, first);
    let second = store
        .put_if("head", "2", Condition::Matches(read.clone()))
        .await
        .unwrap();
    assert_ne!(second, first);
    let stale = store.put_if("head", "3", Condition::Matches(read)).await;
    assert!(matches!(stale, Err(Error::Conflict { .. })), "{stale:?}");
    assert_eq!(&store.get("head").await.unwrap().unwrap()[..], b"2");
}

/// Eight writers race to replace `head` from the same tag: exactly one wins.
async fn race(store: &Store) {
    let tag = store.put("head", "0").await.unwrap();
    let racers = (0..8).map(|i| {
        let store = store.clone();
        let tag = tag.clone();
        tokio::spawn(async move {
            // Distinct bytes: S3's ETag is the content's MD5, so rewriting
            // the same bytes would leave the tag as it was.
            store
                .put_if("head", format!("racer {i}"), Condition::Matches(tag))
                .await
        })
    });
    let outcomes = futures::future::join_all(racers).await;
    let won = outcomes
        .iter()
        .filter(|o| o.as_ref().unwrap().is_ok())
        .count();
    assert_eq!(won, 1, "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_conditional_puts_racing_on_one_etag_let_exactly_one_win() {
    let server = S3Server::start();
    race(&store(&server, "eryx-race")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_conditional_puts_racing_on_one_etag_let_exactly_one_win() {
    let dir = tempfile::tempdir().unwrap();
    let local = Store::open(
        dir.path().to_str().unwrap(),
        &eryx_tests::signing_key(),
        std::iter::empty::<(&str, String)>(),
    )
    .unwrap();
    race(&local).await;
}
