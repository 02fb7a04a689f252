//! Containers left by a killed httpjail: found by their labels, removed by `httpjail --cleanup`
//! and at the start of every `--docker-run`.
//!
//! What a SIGKILLed httpjail leaves: its pause container (running, a jail whose listeners are
//! closed: nothing gets out) and possibly the user's container, still running in that
//! namespace. A container is stale when its [`LABEL_INSTANCE`] names an
//! httpjail of this boot whose process is gone ([`Instance::is_gone`]). Stale pause containers
//! are removed; stale user containers are killed (Docker removes them if they were started
//! with `--rm`; otherwise they stay, stopped, as after a plain `docker run`). Containers of
//! live httpjails, or of another machine through a shared daemon, are left alone.
//!
//! The pause image stays cached (a few hundred bytes); `docker image rm httpjail-pause:1`
//! removes it.

use super::{Docker, Error, Instance, LABEL_INSTANCE, LABEL_PID, LABEL_ROLE, ROLE_PAUSE};

/// What [`remove_stale`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Pause containers (and user containers that never started) removed.
    pub removed: Vec<String>,
    /// User containers killed.
    pub stopped: Vec<String>,
}

/// One container as `docker ps` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    id: String,
    instance: String,
    role: String,
    state: String,
}

/// Lists httpjail's containers and removes the stale ones. Fails only when the list cannot be
/// had (the daemon is unreachable); a container that cannot be removed is logged.
pub async fn remove_stale(docker: &Docker) -> Result<Report, Error> {
    let list = docker
        .run(
            "list httpjail's containers",
            [
                "ps",
                "-a",
                &format!("--filter=label={LABEL_PID}"),
                &format!(
                    "--format={{{{.ID}}}}\t{{{{.Label \"{LABEL_INSTANCE}\"}}}}\t\
                     {{{{.Label \"{LABEL_ROLE}\"}}}}\t{{{{.State}}}}"
                ),
            ],
        )
        .await?;
    let (remove, stop) = plan(&parse(&list), |label| {
        Instance::parse(label).is_some_and(|i| i.is_gone())
    });
    let mut report = Report::default();
    if !remove.is_empty() {
        let mut args = vec!["rm".to_owned(), "-f".to_owned()];
        args.extend(remove.iter().cloned());
        match docker.run("remove stale containers", &args).await {
            Ok(_) => report.removed = remove,
            Err(e) => tracing::warn!("{e}"),
        }
    }
    if !stop.is_empty() {
        let mut args = vec!["kill".to_owned()];
        args.extend(stop.iter().cloned());
        match docker.run("stop stale containers", &args).await {
            Ok(_) => report.stopped = stop,
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(report)
}

fn parse(list: &str) -> Vec<Listed> {
    list.lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            Some(Listed {
                id: f.next()?.trim().to_owned(),
                instance: f.next()?.trim().to_owned(),
                role: f.next()?.trim().to_owned(),
                state: f.next()?.trim().to_owned(),
            })
        })
        .filter(|l| !l.id.is_empty())
        .collect()
}

/// Which stale containers to remove (pause containers, and user containers that never
/// started) and which to kill (running user containers). `gone` judges an instance label.
fn plan(listed: &[Listed], gone: impl Fn(&str) -> bool) -> (Vec<String>, Vec<String>) {
    let (mut remove, mut stop) = (Vec::new(), Vec::new());
    for c in listed.iter().filter(|c| gone(&c.instance)) {
        if c.role == ROLE_PAUSE || c.state == "created" {
            remove.push(c.id.clone());
        } else if matches!(c.state.as_str(), "running" | "paused" | "restarting") {
            stop.push(c.id.clone());
        }
    }
    (remove, stop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_containers_of_gone_httpjails_are_touched() {
        let list = "p1\tdead\tpause\trunning\n\
                    p2\tlive\tpause\trunning\n\
                    c1\tdead\tcontainer\trunning\n\
                    c2\tdead\tcontainer\texited\n\
                    c3\tdead\tcontainer\tcreated\n\
                    c4\tlive\tcontainer\trunning\n\
                    x1\t\t\trunning\n\
                    garbage line\n";
        let listed = parse(list);
        assert_eq!(listed.len(), 7);
        let (remove, stop) = plan(&listed, |label| label == "dead");
        assert_eq!(remove, ["p1", "c3"]);
        assert_eq!(
            stop,
            ["c1"],
            "exited user containers are the user's to keep"
        );
    }
}
