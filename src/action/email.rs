//! `kind = "email"`: a mail per page (or per digest) over SMTP, with lettre on rustls.
//!
//! STARTTLS (required, not opportunistic) by default, implicit TLS or none on request; AUTH
//! with a password from `env:`/`file:`; `ca_file` trusts one CA instead of the system's (an
//! internal relay with its own CA). A fresh connection per page: pages are rare, and a pooled
//! connection would only go stale between them. SMTP 5xx answers are permanent and refuse the
//! page; 4xx and connection problems are retried by the pager queue.

use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::pager::{Failure, render};
use super::webhook::Page;
use crate::config::{EmailAction, SmtpTls};

fn tls_parameters(spec: &EmailAction) -> Result<TlsParameters, String> {
    // Same crypto provider as the HTTP clients (ring).
    let _ = crate::probe::client_builder();
    let mut builder = TlsParameters::builder(spec.host.clone());
    if let Some(path) = &spec.ca_file {
        let pem = std::fs::read(path)
            .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
        let ca =
            Certificate::from_pem(&pem).map_err(|e| format!("ca_file {}: {e}", path.display()))?;
        builder = builder
            .certificate_store(CertificateStore::None)
            .add_root_certificate(ca);
    }
    builder.build_rustls().map_err(|e| format!("TLS: {e}"))
}

fn transport(
    spec: &EmailAction,
    hello: &str,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, String> {
    let tls = match spec.tls {
        SmtpTls::None => Tls::None,
        SmtpTls::Starttls => Tls::Required(tls_parameters(spec)?),
        SmtpTls::Tls => Tls::Wrapper(tls_parameters(spec)?),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(spec.host.as_str())
        .port(spec.port)
        .tls(tls)
        .hello_name(ClientId::Domain(hello.to_string()))
        .timeout(Some(spec.timeout));
    if let (Some(user), Some(password)) = (&spec.user, &spec.password) {
        let password = password.resolve()?;
        builder = builder.credentials(Credentials::new(
            user.clone(),
            password.expose().to_string(),
        ));
    }
    Ok(builder.build())
}

/// The message for `pages` (one page, or a digest).
pub fn message(spec: &EmailAction, pages: &[Page]) -> Result<Message, String> {
    let (subject, body) = render(pages);
    let from: Mailbox = spec.from.parse().map_err(|e| format!("from: {e}"))?;
    let mut builder = Message::builder()
        .from(from)
        .subject(format!("[watchdog] {subject}"));
    for to in &spec.to {
        builder = builder.to(to.parse().map_err(|e| format!("to {to}: {e}"))?);
    }
    builder.body(body).map_err(|e| format!("message: {e}"))
}

pub async fn send(spec: &EmailAction, pages: &[Page]) -> Result<(), Failure> {
    let hello = pages.first().map_or("localhost", |p| p.host.as_str());
    // Bad addresses are caught by `validate`; a secret that cannot be read may appear later.
    let message = message(spec, pages).map_err(Failure::Reject)?;
    let transport = transport(spec, hello).map_err(Failure::Retry)?;
    // lettre's timeout is per read/write; this bounds the whole exchange.
    let sent = tokio::time::timeout(spec.timeout, transport.send(message)).await;
    match sent {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.is_permanent() => Err(Failure::Reject(format!("SMTP: {e}"))),
        Ok(Err(e)) => Err(Failure::Retry(format!("SMTP: {}", chain(&e)))),
        Err(_) => Err(Failure::Retry(format!(
            "SMTP: no answer within {}",
            humantime::format_duration(spec.timeout)
        ))),
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(&format!(": {s}"));
        cur = s.source();
    }
    out
}
