//! `txflow probe`: asks the txflow process of this host whether it is live or ready, for a
//! container's health check where the image has no shell and no HTTP client.

use std::time::Duration;

use anyhow::{bail, Context};

/// How long the process has to answer; a health check that hangs tells nothing.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The address of the admin endpoint of a process configured with `admin_listen`, on this
/// host: its port on loopback (a process listening on every address answers there too).
pub fn local_admin(admin_listen: &str) -> anyhow::Result<String> {
    let port = admin_listen
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .filter(|port| *port != 0)
        .with_context(|| {
            format!("admin.listen `{admin_listen}` names no fixed port to probe; give --admin")
        })?;
    Ok(format!("127.0.0.1:{port}"))
}

/// GETs `path` (`/healthz`, `/readyz`) from `admin`; Ok with the body when it answers 200.
pub async fn probe(admin: &str, path: &str) -> anyhow::Result<String> {
    let url = format!("http://{admin}{path}");
    let client = reqwest::Client::builder().timeout(TIMEOUT).build()?;
    let answer = client.get(&url).send().await.context(url.clone())?;
    let status = answer.status();
    let body = answer.text().await.context(url)?.trim().to_owned();
    if status != reqwest::StatusCode::OK {
        bail!("{admin}{path} answered {}: {body}", status.as_u16());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn the_probe_goes_to_the_configured_port_on_loopback() {
        assert_eq!(local_admin("0.0.0.0:9480").unwrap(), "127.0.0.1:9480");
        assert_eq!(local_admin("[::]:9555").unwrap(), "127.0.0.1:9555");
        let chosen = local_admin("0.0.0.0:0").unwrap_err().to_string();
        assert!(chosen.contains("give --admin"), "{chosen}");
    }

    #[tokio::test]
    async fn only_a_200_is_healthy_and_the_body_says_why_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap().to_string();
        let answers = [
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n",
            "HTTP/1.1 503 Service Unavailable\r\n\r\nno partitions assigned yet\n",
        ];
        let serving = tokio::spawn(async move {
            for answer in answers {
                let (mut stream, _) = listener.accept().await.unwrap();
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await.unwrap();
                stream.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        assert_eq!(probe(&admin, "/healthz").await.unwrap(), "ok");
        let refused = probe(&admin, "/readyz").await.unwrap_err().to_string();
        assert!(
            refused.ends_with("/readyz answered 503: no partitions assigned yet"),
            "{refused}"
        );
        serving.await.unwrap();
        let gone = probe(&admin, "/healthz").await.unwrap_err();
        assert!(format!("{gone:#}").contains(&admin), "{gone:#}");
    }
}
