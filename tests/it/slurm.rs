//! The Slurm chain of `examples/slurm/submit.sh` on a real single-node Slurm: an embedding
//! array, the neighbour job, a scoring array and the merge, whose outputs must equal `miwv
//! select`'s byte for byte.
//!
//! The test starts its own `munged`, `slurmctld` and `slurmd` (no systemd or cgroups:
//! `proctrack/pgid`, `task/none`) from a configuration in a temporary directory, and stops
//! them at the end. `.ci/run` installs Debian's `slurmctld`, `slurmd`, `slurm-client` and
//! `munge` and sets `MIWV_REQUIRE_SLURM=1`, so there the test cannot be skipped; elsewhere it
//! is skipped with a note when Slurm is not installed or the test does not run as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{self, write_examples};

/// A single-node Slurm cluster, stopped when dropped.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
}

fn command_exists(name: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn sh(script: &str) {
    let status = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(status.success(), "{script}");
}

fn short_hostname() -> String {
    let out = Command::new("hostname").arg("-s").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let host = short_hostname();
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        for sub in ["state", "spool", "log"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let d = dir.display();
        let conf = dir.join("slurm.conf");
        std::fs::write(
            &conf,
            format!(
                "ClusterName=miwvtest\n\
                 SlurmctldHost={host}\n\
                 SlurmUser=root\n\
                 AuthType=auth/munge\n\
                 StateSaveLocation={d}/state\n\
                 SlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\n\
                 SlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\n\
                 SlurmdLogFile={d}/log/slurmd.log\n\
                 SlurmctldPort=16817\n\
                 SlurmdPort=16818\n\
                 ProctrackType=proctrack/pgid\n\
                 TaskPlugin=task/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_CPU\n\
                 ReturnToService=2\n\
                 MaxArraySize=1001\n\
                 NodeName={host} CPUs={cpus} State=UNKNOWN\n\
                 PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4\n"
            ),
        )
        .unwrap();
        // munged may already run (another test, the machine's own); starting it twice fails.
        sh(
            "pgrep -x munged >/dev/null || { mkdir -p /run/munge && chown munge:munge /run/munge \
            && runuser -u munge -- /usr/sbin/munged; }",
        );
        let cluster = Cluster {
            dir: dir.to_path_buf(),
            conf,
        };
        for daemon in ["slurmctld", "slurmd"] {
            let status = Command::new(format!("/usr/sbin/{daemon}"))
                .env("SLURM_CONF", &cluster.conf)
                .status()
                .unwrap();
            assert!(status.success(), "{daemon} did not start: see {d}/log");
        }
        let started = Instant::now();
        while !cluster
            .output("sinfo", &["-h", "-o", "%t"])
            .contains("idle")
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the node never became idle: see {d}/log"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        cluster
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("SLURM_CONF", &self.conf);
        cmd
    }

    fn output(&self, program: &str, args: &[&str]) -> String {
        let out = self.command(program).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until no job is queued or running; panics with the queue after `limit`.
    fn wait_idle(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            let queue = self.output("squeue", &["-h", "-o", "%i %j %T %r"]);
            if queue.trim().is_empty() {
                return;
            }
            assert!(
                started.elapsed() < limit,
                "jobs still queued after {limit:?}:\n{queue}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for daemon in ["slurmd", "slurmctld"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.join(format!("{daemon}.pid"))) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}

#[test]
fn the_slurm_chain_equals_select_byte_for_byte() {
    let missing: Vec<_> = ["slurmctld", "slurmd", "sbatch", "munged"]
        .into_iter()
        .filter(|c| !command_exists(c) && !Path::new(&format!("/usr/sbin/{c}")).exists())
        .collect();
    let what = format!("Slurm and munge (missing: {missing:?}) and root to start them");
    if !common::environment_allows("SLURM", &what, missing.is_empty() && is_root()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data.json");
    write_examples(&data, 12);
    let flags = ["--checkpoint-tokens", "256", "--ratio", "0.25"];
    let reference = dir.path().join("select");
    let out = common::miwv()
        .args([
            "select",
            data.to_str().unwrap(),
            "-o",
            reference.to_str().unwrap(),
        ])
        .args(flags)
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let cluster = Cluster::start(&dir.path().join("slurm"));
    let run = dir.path().join("run");
    let submitted = cluster
        .command(
            common::root()
                .join("examples/slurm/submit.sh")
                .to_str()
                .unwrap(),
        )
        .args([data.to_str().unwrap(), run.to_str().unwrap()])
        .args(["--embed-shards", "2", "--score-shards", "3", "--"])
        .args(flags)
        .env("MIWV", env!("CARGO_BIN_EXE_miwv"))
        .env("OMP_WAIT_POLICY", "PASSIVE")
        .current_dir(common::root())
        .output()
        .unwrap();
    let ids = String::from_utf8_lossy(&submitted.stdout).into_owned();
    assert!(
        submitted.status.success(),
        "submit.sh: {}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    assert_eq!(ids.split_whitespace().count(), 4, "four job ids: {ids}");
    cluster.wait_idle(Duration::from_secs(900));

    let logs = || {
        std::fs::read_dir(run.join("slurm"))
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .map(|e| {
                        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                        format!("== {}\n{text}", e.path().display())
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    };
    assert!(
        run.join("run.json").exists(),
        "the chain did not finish:\n{}",
        logs()
    );
    for file in ["scores.jsonl", "selected.json"] {
        let a = std::fs::read(reference.join(file)).unwrap();
        let b = std::fs::read(run.join(file)).unwrap();
        assert!(a == b, "{file} differs from select's");
    }
    let record = common::read_json(&run.join("run.json"));
    assert_eq!(record["shards"]["embed"], 2);
    assert_eq!(record["shards"]["score"], 3);
    // Every array element logged, under the job's name.
    let names: Vec<String> = std::fs::read_dir(run.join("slurm"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    for job in ["miwv-embed", "miwv-neighbours", "miwv-score", "miwv-merge"] {
        assert!(names.iter().any(|n| n.starts_with(job)), "{job}: {names:?}");
    }
}
