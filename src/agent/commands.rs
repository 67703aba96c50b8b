//! The agent's side of the REST API's write commands: restart and reinitialize are requests to
//! the HA core ([`crate::ha::Request`]), carried out as its tasks and answered through
//! [`crate::ha::Action::Answer`]; the main loop never waits for them.

use crate::api::{Access, Reply};
use crate::config::Config;
use crate::ha::{Input, Request, RequestId};

use super::Agent;

/// The REST API's access rules from `restapi`.
pub(super) fn access_of(cfg: &Config) -> Access {
    Access {
        auth: cfg
            .restapi
            .authentication
            .as_ref()
            .map(|a| (a.username.clone(), a.password.clone())),
        allowlist: cfg.restapi.allowlist.clone(),
        include_members: cfg.restapi.allowlist_include_members,
    }
}

impl Agent {
    /// Hands an API request to the core; `reply` is answered when the core says.
    pub(super) async fn request(&mut self, request: Request, reply: Reply) {
        self.last_request += 1;
        let id = RequestId(self.last_request);
        self.replies.insert(id, reply);
        let actions = self
            .core
            .step(Input::Requested { id, request }, self.mono_now());
        self.execute(actions).await;
    }

    /// The core's answer to request `id`.
    pub(super) fn answer(&mut self, id: RequestId, result: Result<(), String>) {
        if let Some(reply) = self.replies.remove(&id) {
            reply.send(result);
        }
    }
}
