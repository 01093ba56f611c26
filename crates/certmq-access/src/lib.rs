//! certmq's access plane (SPEC 11): who may connect, and what each client
//! may publish and read.
//!
//! What it does: MQTT users with argon2id password hashes ([`Users`]),
//! JSON Web Tokens checked against keys from the configuration ([`Jwt`]),
//! both offered to the listeners' authentication chains as one
//! [`certmq_net::Authenticator`] ([`Access`]); authorization policies
//! ([`Policy`]) validated, stored, and compiled into a [`PolicySet`] that
//! the broker asks per packet through the core's
//! [`certmq_core::Authorizer`] seam without scanning every policy; a
//! dry-run ([`PolicySet::explain`]) that names the deciding policy.
//!
//! What it does not do: HTTP (the admin API maps [`AccessError`] to
//! statuses), SQL (`certmq-store` implements [`store::AccessStore`]), or
//! certificate rules (`certmq-registry`).

#![forbid(unsafe_code)]

mod authn;
mod config;
mod console;
mod error;
mod jwt;
mod policy;
mod set;
pub mod store;
mod users;

#[cfg(test)]
mod tests;

pub use authn::{Access, PolicyView};
pub use config::{AccessConfig, AuthenticationConfig, AuthorizationConfig, JwtConfig, NoMatch};
pub use console::{ConsoleUserView, ConsoleUsers, Role};
pub use error::{AccessError, ErrorKind};
pub use jwt::Jwt;
pub use policy::{Action, Effect, Policy, PolicyInput};
pub use set::{Decision, Explained, PolicySet};
pub use users::{hash_password, HashParams, UserView, Users};
