//! The backend against librdkafka's mock cluster: real Kafka protocol over TCP on loopback,
//! brokers, topics, leaders and a group's committed offsets set up through the same protocol.

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::time::Duration;
use themis_backend_kafka::{KafkaBackend, KafkaSettings};
use themis_caps::KafkaCaps;
use themis_caps::types::CapError;

/// Wait up to 10 s for `check` (metadata the client caches is refreshed on its own schedule).
async fn eventually<F, Fut>(mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(std::time::Instant::now() < until, "timed out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn backend(bootstrap: &str) -> KafkaBackend {
    let mut settings = KafkaSettings::new(bootstrap);
    settings.timeout = Duration::from_secs(5);
    KafkaBackend::new("kafka", settings).unwrap_or_else(|e| panic!("{e}"))
}

/// `count` records on each of `partitions`, one request each (exact offsets).
fn produce(bootstrap: &str, topic: &str, partitions: &[(i32, usize)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap_or_else(|e| panic!("producer: {e}"));
    for (partition, count) in partitions {
        for i in 0..*count {
            let key = i.to_string();
            producer
                .send(
                    BaseRecord::to(topic)
                        .partition(*partition)
                        .key(&key)
                        .payload("x"),
                )
                .unwrap_or_else(|(e, _)| panic!("send: {e}"));
        }
    }
    producer
        .flush(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("flush: {e}"));
}

/// Commit `offset` for `group` on a partition, as a consumer of the group would.
fn commit(bootstrap: &str, group: &str, topic: &str, partition: i32, offset: i64) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap_or_else(|e| panic!("consumer: {e}"));
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap_or_else(|e| panic!("{e}"));
    consumer
        .commit(&tpl, CommitMode::Sync)
        .unwrap_or_else(|e| panic!("commit: {e}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_topics_leaders_and_a_groups_lag_are_read_over_the_protocol() {
    let cluster = MockCluster::new(3).unwrap_or_else(|e| panic!("mock cluster: {e}"));
    let bootstrap = cluster.bootstrap_servers();
    cluster
        .create_topic("orders", 4, 3)
        .unwrap_or_else(|e| panic!("{e}"));
    let kafka = backend(&bootstrap);

    let info = kafka
        .describe_cluster()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        info.brokers.iter().map(|b| b.id).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    // The controller is what the cluster's metadata names. librdkafka's mock cluster never sets
    // one and answers 0 (a real cluster names one of its brokers; with none named, -1).
    assert_eq!(info.controller_id, 0, "{info:?}");
    assert!(info.cluster_id.starts_with("mockCluster"), "{info:?}");

    let topics = kafka.list_topics().await.unwrap_or_else(|e| panic!("{e}"));
    let orders = topics.iter().find(|t| t.name == "orders").expect("orders");
    assert_eq!((orders.partitions, orders.replication_factor), (4, 3));
    assert_eq!(orders.under_replicated_partitions, 0);
    assert!(!orders.internal);

    // Lag from real offsets: 10 records on partition 0 with 4 committed, 7 on partition 1 with
    // nothing committed, none elsewhere.
    produce(&bootstrap, "orders", &[(0, 10), (1, 7)]);
    commit(&bootstrap, "orders-consumer", "orders", 0, 4);
    let lag = kafka
        .consumer_lag("orders-consumer", "orders")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lag.len(), 4, "{lag:?}");
    assert_eq!(
        (lag[0].committed_offset, lag[0].end_offset, lag[0].lag),
        (4, 10, 6)
    );
    assert_eq!(
        (lag[1].committed_offset, lag[1].end_offset, lag[1].lag),
        (-1, 7, 7)
    );
    assert_eq!(lag[2].lag + lag[3].lag, 0);
    assert!(matches!(
        kafka.consumer_lag("orders-consumer", "no-such-topic").await,
        Err(CapError::NotFound(_))
    ));

    // The mock places leaders round-robin, not on the first replica as Kafka does at creation:
    // put each on its preferred replica (what a preferred-leader election does), then move
    // partition 2's elsewhere.
    let replicas: Vec<Vec<i32>> = {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap_or_else(|e| panic!("{e}"));
        let m = client
            .fetch_metadata(Some("orders"), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}"));
        m.topics()[0]
            .partitions()
            .iter()
            .map(|p| p.replicas().to_vec())
            .collect()
    };
    for (partition, r) in replicas.iter().enumerate() {
        cluster
            .partition_leader("orders", partition as i32, Some(r[0]))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    eventually(|| async {
        kafka
            .partition_leadership()
            .await
            .is_ok_and(|off| off.is_empty())
    })
    .await;
    let preferred = replicas[2][0];
    let other = if preferred == 1 { 2 } else { 1 };
    cluster
        .partition_leader("orders", 2, Some(other))
        .unwrap_or_else(|e| panic!("{e}"));
    eventually(|| async {
        kafka
            .partition_leadership()
            .await
            .is_ok_and(|off| off.len() == 1)
    })
    .await;
    let off = kafka
        .partition_leadership()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(off.len(), 1, "{off:?}");
    assert_eq!(
        (off[0].partition, off[0].leader, off[0].preferred),
        (2, other, preferred)
    );
    assert!(off[0].preferred_in_sync);

    // What needs a workload binding says so instead of guessing one.
    assert!(matches!(
        kafka.restart_consumers("orders-consumer").await,
        Err(CapError::Unavailable(why)) if why.contains("Kubernetes")
    ));
    let doctor = kafka.doctor().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(doctor.brokers, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_cluster_is_unavailable_within_the_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut settings = KafkaSettings::new(format!("127.0.0.1:{port}"));
    settings.timeout = Duration::from_secs(2);
    let kafka = KafkaBackend::new("kafka", settings).unwrap_or_else(|e| panic!("{e}"));
    let started = std::time::Instant::now();
    assert!(matches!(
        kafka.list_topics().await,
        Err(CapError::Unavailable(_))
    ));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(kafka.doctor().await.is_err());
}

/// A broker that goes down leaves the cluster's metadata (what `describe-cluster` reports and
/// the broker diagnosis compares with the brokers Prometheus sees up), and is back once it is.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_going_down_leaves_the_cluster_and_comes_back() {
    let cluster = MockCluster::new(3).unwrap_or_else(|e| panic!("mock cluster: {e}"));
    let kafka = backend(&cluster.bootstrap_servers());
    let brokers = || async {
        kafka
            .describe_cluster()
            .await
            .map(|c| c.brokers.iter().map(|b| b.id).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(brokers().await, [1, 2, 3]);
    cluster.broker_down(2).unwrap_or_else(|e| panic!("{e}"));
    eventually(|| async { brokers().await == [1, 3] }).await;
    cluster.broker_up(2).unwrap_or_else(|e| panic!("{e}"));
    eventually(|| async { brokers().await == [1, 2, 3] }).await;
}
