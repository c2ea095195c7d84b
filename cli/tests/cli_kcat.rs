//! The CLI as kcat and rpk users drive it, against a real broker process: byte-exact produce
//! and consume (headers, keys, base64 and length-prefixed input, hex/base64/raw output,
//! format strings, null values), relative starts and `--end`, all-or-nothing input, several
//! topics per call, JSON output of every list and describe, offsets by time, adding
//! partitions, deleting records, cluster health, `| head`, and the load tool's exact counts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::{eventually, high_watermark, run_cli, run_cli_output, BrokerProcess, BIN};

const WAIT: Duration = Duration::from_secs(20);

fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect()
}

#[tokio::test]
async fn produce_and_consume_are_byte_exact_in_every_encoding() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let addr = broker.addr.as_str();
    run_cli(addr, &["topic", "create", "kv"], "");
    // Keys and headers, a base64 value with bytes no text line could hold, an empty value
    // sent as a tombstone (-Z), a keyless line.
    let input = "k1::aGVsbG8=\nk2::AAH/Cg==\nk3::\n";
    let args = ["produce", "kv", "-K", "::", "-H", "trace=abc", "--value-encoding", "base64", "-Z"];
    run_cli(addr, &args, input);
    let hex = run_cli(
        addr,
        &["consume", "kv", "-o", "beginning", "-e", "-f", "%o %k=%v [%h] %S\\n", "--value-encoding", "hex"],
        "",
    );
    assert_eq!(hex, "0 k1=68656c6c6f [trace=616263] 5\n1 k2=0001ff0a [trace=616263] 4\n2 k3= [trace=616263] -1\n");
    let raw = run_cli_output(addr, &["consume", "kv", "-o", "1", "-e", "-f", "%v", "--value-encoding", "raw"], b"");
    assert!(raw.status.success());
    assert_eq!(raw.stdout, b"\x00\x01\xff\n", "raw bytes come out as they went in");
    let json = json_lines(&run_cli(
        addr,
        &["consume", "kv", "-o", "beginning", "-e", "-f", "json", "--value-encoding", "base64"],
        "",
    ));
    assert_eq!(json.len(), 3);
    assert_eq!(json[1]["value"], "AAH/Cg==");
    assert_eq!(json[2]["value"], serde_json::Value::Null, "a tombstone is null, not empty");
    assert_eq!(json[0]["headers"]["trace"], "YWJj");
    let text = run_cli(addr, &["consume", "kv", "-o", "2", "-e"], "");
    assert_eq!(text, "partition=0 offset=2 timestamp=".to_string() + text.split("timestamp=").nth(1).unwrap());
    assert!(text.ends_with("key=k3 value=(null)\n"), "{text}");

    // Length-prefixed frames: newlines and NULs inside keys and values, a null key.
    let mut frames = Vec::new();
    for (k, v) in [(Some(&b"a\nb"[..]), &b"line1\nline2\x00"[..]), (None, &b""[..])] {
        match k {
            Some(k) => {
                frames.extend_from_slice(&(k.len() as u32).to_be_bytes());
                frames.extend_from_slice(k);
            }
            None => frames.extend_from_slice(&u32::MAX.to_be_bytes()),
        }
        frames.extend_from_slice(&(v.len() as u32).to_be_bytes());
        frames.extend_from_slice(v);
    }
    run_cli(addr, &["topic", "create", "bin"], "");
    let out = run_cli_output(addr, &["produce", "bin", "--input", "length-prefixed"], &frames);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let got = run_cli(
        addr,
        &["consume", "bin", "-o", "beginning", "-e", "-f", "%K:%k{%v}%S;", "--key-encoding", "base64"],
        "",
    );
    assert_eq!(got, "3:YQpi{line1\nline2\0}12;-1:{}0;");
}

#[tokio::test]
async fn bad_input_sends_nothing_and_names_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let addr = broker.addr.as_str();
    run_cli(addr, &["topic", "create", "strict"], "");
    let out =
        run_cli_output(addr, &["produce", "strict", "--value-encoding", "base64"], b"b2s=\nb2s=\nnot base64!\nb2s=\n");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3: value is not base64"), "{err}");
    assert_eq!(err.matches("error").count(), 1, "said once: {err}");
    let client = broker.client().await;
    assert_eq!(high_watermark(&client, "strict", 0).await, 0, "nothing was sent");
    // --stream sends what came before the bad line, and says so.
    let out =
        run_cli_output(addr, &["produce", "strict", "--stream", "--value-encoding", "base64"], b"b2s=\nb2s=\n!!\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the 2 records before it were sent"));
    assert_eq!(high_watermark(&client, "strict", 0).await, 2);
    // A header that is not key=value is refused before anything happens.
    let out = run_cli_output(addr, &["produce", "strict", "-H", "novalue"], b"x\n");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("key=value"));
}

#[tokio::test]
async fn relative_starts_end_and_offsets_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let addr = broker.addr.as_str();
    run_cli(addr, &["topic", "create", "rel", "-p", "2"], "");
    let lines: String = (0..10).map(|i| format!("v{i}\n")).collect();
    run_cli(addr, &["produce", "rel", "-p", "0"], &lines);
    let middle = tidelog_server::clock::now_ms();
    run_cli(addr, &["produce", "rel", "-p", "1"], "w0\nw1\nw2\n");
    // The last 2 of each partition, then exit at the end (nothing new is waited for).
    let last = run_cli(addr, &["consume", "rel", "-o", "-2", "-e", "-f", "%p:%v\\n"], "");
    let mut got: Vec<&str> = last.lines().collect();
    got.sort_unstable();
    assert_eq!(got, ["0:v8", "0:v9", "1:w1", "1:w2"]);
    // -N beyond the start clamps to it; an empty partition ends at once.
    run_cli(addr, &["topic", "create", "empty"], "");
    assert_eq!(run_cli(addr, &["consume", "empty", "-o", "beginning", "-e"], ""), "");
    assert_eq!(run_cli(addr, &["consume", "rel", "-p", "1", "-o", "-100", "-e", "-f", "%v "], ""), "w0 w1 w2 ");

    let offsets = run_cli(addr, &["offsets", "rel"], "");
    assert!(
        offsets.contains("rel/0 earliest=0 latest=10") && offsets.contains("rel/1 earliest=0 latest=3"),
        "{offsets}"
    );
    let by_time =
        json_lines(&run_cli(addr, &["offsets", "rel", "--time", &middle.to_string(), "--format", "json"], ""));
    assert_eq!(by_time[0]["offset"], 10, "nothing in partition 0 at or after the time: its end");
    assert_eq!(by_time[0]["timestamp_ms"], serde_json::Value::Null);
    assert_eq!(by_time[1]["offset"], 0);
    let bad = run_cli_output(addr, &["consume", "rel", "-o", "-x"], b"");
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("-N (the last N)"));
}

#[tokio::test]
async fn admin_commands_take_several_topics_and_print_json() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let addr = broker.addr.as_str();
    run_cli(addr, &["topic", "create", "a", "b", "c", "-p", "2"], "");
    let topics = &json_lines(&run_cli(addr, &["topic", "list", "--format", "json"], ""))[0];
    let names: Vec<&str> = topics.as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert_eq!(topics[0]["partitions"], 2);
    // One of three exists already: the others are created, the failure said, the exit non-zero.
    let out = run_cli_output(addr, &["topic", "create", "c", "d", "e"], b"");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("'c'"), "{}", String::from_utf8_lossy(&out.stderr));
    run_cli(addr, &["topic", "delete", "a", "b", "d", "e"], "");
    let left = run_cli(addr, &["topic", "list"], "");
    assert_eq!(left.lines().map(|l| l.split('\t').next().unwrap()).collect::<Vec<_>>(), ["c"]);

    let described = &json_lines(&run_cli(addr, &["topic", "describe", "c", "--format", "json"], ""))[0];
    assert_eq!(described["config"]["fsync_policy"]["source"], "default");
    assert_eq!(described["partition_details"][1]["leader"], 1);
    let health = &json_lines(&run_cli(addr, &["cluster", "health", "--format", "json"], ""))[0];
    assert_eq!(health["healthy"], true, "{health}");
    assert!(run_cli(addr, &["cluster", "health"], "").starts_with("healthy: true"));
    let cluster = &json_lines(&run_cli(addr, &["cluster", "describe", "--format", "json"], ""))[0];
    assert_eq!(cluster["brokers"][0]["up"], true);
    run_cli(addr, &["produce", "c", "-p", "0"], "x\ny\n");
    run_cli(addr, &["consume", "c", "-g", "g1", "--from-beginning", "-c", "2"], "");
    let groups = &json_lines(&run_cli(addr, &["group", "list", "--format", "json"], ""))[0];
    assert_eq!(groups[0]["group"], "g1");
    let group = &json_lines(&run_cli(addr, &["group", "describe", "g1", "--format", "json"], ""))[0];
    assert_eq!(group["partitions"][0]["committed"], 2, "{group}");
}

#[tokio::test]
async fn partitions_are_added_and_records_deleted_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let mut broker = BrokerProcess::start(&data, &[]);
    let addr = broker.addr.clone();
    run_cli(&addr, &["topic", "create", "grow", "-p", "2"], "");
    let grown = run_cli(&addr, &["topic", "add-partitions", "grow", "--num", "2"], "");
    assert!(grown.starts_with("topic grow partitions=4"), "{grown}");
    let fewer = run_cli_output(&addr, &["topic", "add-partitions", "grow", "--total", "3"], b"");
    assert!(!fewer.status.success() && String::from_utf8_lossy(&fewer.stderr).contains("never removed"));
    run_cli(&addr, &["produce", "grow", "-p", "3"], &(0..6).map(|i| format!("r{i}\n")).collect::<String>());

    let trimmed = run_cli(&addr, &["topic", "delete-records", "grow", "-p", "3", "--before", "4"], "");
    assert_eq!(trimmed, "grow/3 log_start=4\n");
    let above = run_cli_output(&addr, &["topic", "delete-records", "grow", "-p", "3", "--before", "7"], b"");
    assert!(!above.status.success() && String::from_utf8_lossy(&above.stderr).contains("high watermark is 6"));
    let rest = run_cli(&addr, &["consume", "grow", "-p", "3", "-o", "beginning", "-e", "-f", "%o:%v "], "");
    assert_eq!(rest, "4:r4 5:r5 ");
    assert!(broker.terminate().await.success());

    let broker = BrokerProcess::start(&data, &[]);
    let described = run_cli(&broker.addr, &["topic", "describe", "grow"], "");
    assert!(described.contains("partitions=4"), "{described}");
    assert!(described.contains("partition 3 log_start=4 high_watermark=6"), "{described}");
    // Everything: below the high watermark.
    run_cli(&broker.addr, &["topic", "delete-records", "grow", "--before", "end"], "");
    let client = broker.client().await;
    eventually(WAIT, "every log start at its high watermark", || async {
        let t = client.describe_topic("grow").await.ok()?;
        t.partitions.iter().all(|p| p.log_start_offset == p.high_watermark).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_closed_pipe_ends_the_cli_quietly_and_bench_counts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&dir.path().join("d"), &[]);
    let addr = broker.addr.as_str();
    let out = run_cli_output(
        addr,
        &["bench", "produce", "--topic", "exact", "--records", "1001", "--batch-records", "100", "--quiet", "--json"],
        b"",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let client = broker.client().await;
    assert_eq!(high_watermark(&client, "exact", 0).await, 1001, "exactly --records");
    let out = run_cli_output(
        addr,
        &["bench", "produce", "--topic", "gone", "--records", "10", "--quiet", "--delete-topic"],
        b"",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(client.describe_topic("gone").await.is_err(), "--delete-topic removes what the bench created");

    // `tidelog consume | head -n 1`: the consumer goes on writing into a closed pipe.
    let script = format!("{BIN} consume exact -o beginning -e --broker {addr} | head -n 1");
    let out = std::process::Command::new("sh").args(["-c", &script]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");
}
