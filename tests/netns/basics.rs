//! The jail's network from inside: what is redirected, what is refused, what stays local.

use crate::support::{self, Run};

#[tokio::test(flavor = "multi_thread")]
async fn http_to_any_name_reaches_the_jails_listener() {
    if !support::prerequisites() {
        return;
    }
    let done = support::run(Run::argv(&[
        "curl",
        "-sS",
        "--max-time",
        "10",
        "http://name.test/",
    ]))
    .await;
    done.success();
    assert_eq!(
        done.stdout,
        "jail=jail listener=http orig=6.6.6.6:80 host=name.test\n"
    );
}
