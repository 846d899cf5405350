//! TLS reload in the owner task (SIGHUP, `POST /v1/tls/reload`): the PKI directory is
//! read and checked on the blocking pool ([`crate::tls::NodeTls::reload`]), then the
//! transport switches to it and re-checks its open connections
//! ([`crate::transport::Transport::set_tls`]). A file set that does not pass changes
//! nothing: the node keeps its certificates, trust and connections.
//!
//! One load at a time: a reload asked for while one runs starts after it, since the
//! files may have changed after the running load read them; the callers waiting for
//! it get its answer. Reloads that pile up meanwhile share one load.

use std::mem;

use tokio::sync::oneshot;

use super::{DiskDone, Owner};
use crate::api::{ApiFailure, TlsReloadJson};
use crate::metrics::{OutcomeLabel, ReasonLabel};
use crate::tls::{NodeTls, TlsError};
use crate::transport::TransportError;

type Waiter = oneshot::Sender<Result<TlsReloadJson, ApiFailure>>;

#[derive(Default)]
pub(super) struct TlsReloads {
    running: bool,
    /// Callers of the running load.
    current: Vec<Waiter>,
    /// Asked for while a load ran: what starts the next one, and who waits for it.
    queued: Option<&'static str>,
    next: Vec<Waiter>,
}

impl Owner {
    /// Starts a reload (`trigger`: `api` or `sighup`), or queues it behind the one
    /// running.
    pub(super) fn reload_tls(&mut self, trigger: &'static str, reply: Option<Waiter>) {
        let reloads = &mut self.tls_reloads;
        if reloads.running {
            reloads.queued.get_or_insert(trigger);
            reloads.next.extend(reply);
            return;
        }
        reloads.running = true;
        reloads.current.extend(reply);
        tracing::info!(trigger, pki = %self.transport.tls().pki_dir().display(), "reloading the certificates");
        let current = self.transport.tls().clone();
        let tx = self.disk_tx.clone();
        tokio::task::spawn_blocking(move || {
            let result = current.reload();
            let _ = tx.blocking_send(DiskDone::TlsLoaded { trigger, result });
        });
    }

    /// Applies a finished load (or reports why it cannot be), answers its callers and
    /// starts the queued reload, if any.
    pub(super) fn tls_loaded(&mut self, trigger: &'static str, result: Result<NodeTls, TlsError>) {
        let answer = self.apply_tls(trigger, result);
        for waiter in mem::take(&mut self.tls_reloads.current) {
            let _ = waiter.send(answer.clone());
        }
        self.tls_reloads.running = false;
        if let Some(next) = self.tls_reloads.queued.take() {
            let waiters = mem::take(&mut self.tls_reloads.next);
            self.tls_reloads.current = waiters;
            self.reload_tls(next, None);
        }
    }

    fn apply_tls(
        &mut self,
        trigger: &'static str,
        result: Result<NodeTls, TlsError>,
    ) -> Result<TlsReloadJson, ApiFailure> {
        let switched = match result {
            Ok(tls) => {
                let loaded = tls.summary().clone();
                self.transport
                    .set_tls(tls)
                    .map(|connections| (loaded, connections))
                    .map_err(|e: TransportError| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let outcome = if switched.is_ok() { "ok" } else { "failed" };
        self.metrics
            .tls_reloads
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .inc();
        match switched {
            Ok((loaded, connections)) => {
                self.metrics
                    .tls_certificate_expiry
                    .set(loaded.certificate.not_after_unix);
                for closed in &connections.closed {
                    self.metrics
                        .tls_reload_closed
                        .get_or_create(&ReasonLabel {
                            reason: closed.reason.clone(),
                        })
                        .inc();
                }
                let revoked: usize = loaded.crls.iter().map(|c| c.revoked.len()).sum();
                let refused: Vec<String> = connections
                    .closed
                    .iter()
                    .filter(|c| !c.replaced)
                    .map(|c| format!("{} ({})", c.peer, c.reason))
                    .collect();
                let detail = format!(
                    "certificate serial {} (issuer {}, expires {}); {} trusted CA(s), {} revocation list(s) with {revoked} revoked certificate(s); connections: {} kept, {} closed{}{}",
                    loaded.certificate.serial,
                    loaded.certificate.issuer,
                    loaded.certificate.not_after,
                    loaded.trusted.len(),
                    loaded.crls.len(),
                    connections.kept,
                    connections.closed.len(),
                    if refused.is_empty() {
                        String::new()
                    } else {
                        format!(" (no longer trusted: {})", refused.join(", "))
                    },
                    if connections.renewed > 0 {
                        format!(", {} renewed with the new certificate", connections.renewed)
                    } else {
                        String::new()
                    },
                );
                tracing::info!(trigger, "certificates reloaded: {detail}");
                for issuer in &loaded.ignored_crls {
                    tracing::warn!(
                        "crl.pem holds a revocation list of \"{issuer}\", a CA this node does not trust: ignored"
                    );
                }
                self.events.push_local("tls_reloaded", Some(detail));
                Ok(TlsReloadJson {
                    trigger: trigger.to_owned(),
                    loaded,
                    connections,
                })
            }
            Err(e) => {
                let error = format!("{e}; the node keeps its current certificates");
                tracing::error!(trigger, "certificate reload failed: {error}");
                self.events
                    .push_local("tls_reload_failed", Some(error.clone()));
                Err(ApiFailure {
                    status: 422,
                    code: "tls_reload_failed".into(),
                    error,
                })
            }
        }
    }
}
