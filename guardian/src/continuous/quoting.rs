//! The attestor's answers to the fleet: a quote over the verifier's nonce
//! with the AK (loaded at the first challenge and kept), and the device's
//! enrolment steps, both with this thread's TPM session. Part of the
//! attestor thread (`Worker`).

use super::*;

impl Worker {
    /// A step of the fleet's enrolment, with this thread's TPM session.
    pub(super) fn enrol(&mut self, step: EnrolStep) -> Result<Vec<u8>, String> {
        let handle = self.quoting.ak_handle;
        let tpm = self
            .ledger
            .as_mut()
            .and_then(|l| l.tpm_mut())
            .ok_or("no TPM: this device cannot enrol")?;
        let body = match step {
            EnrolStep::Request => {
                serde_json::to_vec(&crate::enrol::request(tpm, handle).map_err(|e| e.to_string())?)
            }
            EnrolStep::Activate(challenge) => serde_json::to_vec(
                &crate::enrol::activate(tpm, handle, &challenge).map_err(|e| e.to_string())?,
            ),
        };
        body.map_err(|e| e.to_string())
    }

    /// A quote for the fleet's `nonce`, bundled as `guardian quote` does.
    pub(super) fn quote(&mut self, nonce: &[u8]) -> Result<Vec<u8>, String> {
        use crate::attest::bundle;
        if nonce.len() < bundle::MIN_NONCE || nonce.len() > bundle::MAX_NONCE {
            return Err(format!(
                "a nonce of {} bytes (from {} to {} accepted)",
                nonce.len(),
                bundle::MIN_NONCE,
                bundle::MAX_NONCE
            ));
        }
        let q = &mut self.quoting;
        let tpm = self
            .ledger
            .as_mut()
            .and_then(|l| l.tpm_mut())
            .ok_or("no TPM: this device has nothing to quote with")?;
        let (ak, ak_pub) = match &q.ak {
            Some(a) => a.clone(),
            None => {
                let a = tpm.ak(q.ak_handle).map_err(|e| e.to_string())?;
                q.ak = Some(a.clone());
                a
            }
        };
        let quote = tpm.quote(ak, nonce, &q.pcrs).map_err(|e| e.to_string())?;
        // Read after the quote, as `guardian quote` does: the log then
        // holds every record the quoted values contain (maybe more).
        // Read from the file, not from this thread's copy, so records
        // another process appended (`guardian stop --unload`) are in it.
        let log = crate::evidence::log::read(&q.log).map_err(|e| e.to_string())?;
        let agent = crate::status::Status::read(&q.status)
            .ok()
            .map(|st| st.attestor_state());
        let ev = bundle::build(nonce, &quote, &ak_pub, &log, agent).map_err(|e| e.to_string())?;
        serde_json::to_vec(&ev).map_err(|e| e.to_string())
    }
}
