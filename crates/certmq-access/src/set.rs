//! The policies in force, compiled (SPEC 11).
//!
//! Rules are kept in evaluation order (ascending priority, then creation).
//! PUBLISH and delivery checks walk a trie of the rules' topic templates
//! per action: one path per topic level plus the `+`, `#` and variable
//! branches, so their cost grows with the topic depth and the rules that
//! match, not with the number of policies; the first (lowest-ordered)
//! matching rule that applies to the client decides. CONNECT and
//! SUBSCRIBE (rare) scan the rules in order, which is also the naive
//! oracle the compiled walk is tested against.
//!
//! SUBSCRIBE decides on the filter as a whole: the first rule whose
//! filter covers it (every topic the subscription could receive) decides;
//! a deny rule before it that covers only part of the filter makes the
//! subscription [`SubscribeVerdict::Checked`]: allowed, each delivery
//! asked. So `deny #` refuses a subscription to `#` even when an earlier
//! rule allows `devices/dev1/#`.

use std::collections::HashMap;
use std::sync::Arc;

use certmq_codec::QoS;
use certmq_core::{ClientFacts, DenyAction, SubscribeVerdict};

use crate::config::NoMatch;
use crate::policy::{filters, Action, Cidr, Effect, Glob, Level, Policy, Template};

/// A policy ready to evaluate.
#[derive(Debug)]
pub(crate) struct Rule {
    pub policy: Arc<Policy>,
    actions: u8,
    templates: Vec<Template>,
    client_ids: Option<Vec<Glob>>,
    usernames: Option<Vec<Glob>>,
    ca_ids: Option<Vec<String>>,
    cidrs: Option<Vec<Cidr>>,
    qos: Option<u8>,
}

impl Rule {
    fn compile(policy: Arc<Policy>) -> Self {
        let globs =
            |l: &Option<Vec<String>>| l.as_ref().map(|l| l.iter().map(|p| Glob::new(p)).collect());
        Rule {
            actions: policy.actions.iter().fold(0, |m, a| m | a.bit()),
            templates: policy
                .topics
                .iter()
                .flatten()
                .filter_map(|t| Template::parse(t).ok())
                .collect(),
            client_ids: globs(&policy.client_ids),
            usernames: globs(&policy.usernames),
            ca_ids: policy.ca_ids.clone(),
            cidrs: policy
                .source_cidrs
                .as_ref()
                .map(|l| l.iter().filter_map(|c| Cidr::parse(c)).collect()),
            qos: policy
                .qos
                .as_ref()
                .map(|l| l.iter().fold(0, |m, q| m | (1u8 << q.min(&2)))),
            policy,
        }
    }

    fn any_topic(&self) -> bool {
        self.policy.topics.is_none()
    }

    /// The client conditions.
    fn applies_to(&self, c: &ClientFacts) -> bool {
        if let Some(g) = &self.client_ids {
            if !g.iter().any(|g| g.matches(&c.client_id)) {
                return false;
            }
        }
        if let Some(g) = &self.usernames {
            match &c.username {
                Some(u) if g.iter().any(|g| g.matches(u)) => {}
                _ => return false,
            }
        }
        if let Some(ids) = &self.ca_ids {
            match &c.cert {
                Some(cert) if ids.iter().any(|i| i.eq_ignore_ascii_case(&cert.ca_id)) => {}
                _ => return false,
            }
        }
        if let Some(cidrs) = &self.cidrs {
            match c.peer_ip {
                Some(ip) if cidrs.iter().any(|n| n.contains(ip)) => {}
                _ => return false,
            }
        }
        true
    }

    /// Action, client, QoS and retain conditions (`qos` None: not asked,
    /// as for deliveries).
    fn applies(
        &self,
        action: Action,
        c: &ClientFacts,
        qos: Option<QoS>,
        retain: Option<bool>,
    ) -> bool {
        if self.actions & action.bit() == 0 {
            return false;
        }
        if let (Some(mask), Some(q)) = (self.qos, qos) {
            if mask & (1 << (q as u8)) == 0 {
                return false;
            }
        }
        if action == Action::Publish {
            if let (Some(want), Some(r)) = (self.policy.retain, retain) {
                if want != r {
                    return false;
                }
            }
        }
        self.applies_to(c)
    }

    /// Concrete filters for a client.
    fn filters(&self, c: &ClientFacts) -> Vec<String> {
        self.templates.iter().flat_map(|t| t.expand(c)).collect()
    }
}

/// A trie of topic templates: rule indexes at the nodes where templates
/// end.
#[derive(Debug, Default)]
struct Node {
    literal: HashMap<Box<str>, Node>,
    plus: Option<Box<Node>>,
    vars: Vec<(Vec<crate::policy::Part>, Node)>,
    /// Rules whose template ends here.
    end: Vec<u32>,
    /// Rules whose template ends with `#` here.
    hash: Vec<u32>,
}

impl Node {
    fn insert(&mut self, t: &Template, rule: u32) {
        let mut node = self;
        for level in &t.0 {
            node = match level {
                Level::Literal(s) => node.literal.entry(s.as_str().into()).or_default(),
                Level::Plus => node.plus.get_or_insert_with(Box::default),
                Level::Hash => {
                    node.hash.push(rule);
                    return;
                }
                Level::Vars(parts) => {
                    let at = node.vars.iter().position(|(p, _)| p == parts);
                    match at {
                        Some(i) => match node.vars.get_mut(i) {
                            Some((_, n)) => n,
                            None => return,
                        },
                        None => {
                            node.vars.push((parts.clone(), Node::default()));
                            match node.vars.last_mut() {
                                Some((_, n)) => n,
                                None => return,
                            }
                        }
                    }
                }
            };
        }
        node.end.push(rule);
    }

    /// Calls `found` with every rule whose template matches `levels[i..]`
    /// for the client.
    fn walk(&self, levels: &[&str], i: usize, c: &ClientFacts, found: &mut dyn FnMut(u32)) {
        let dollar = i == 0 && levels.first().is_some_and(|l| l.starts_with('$'));
        if !dollar {
            self.hash.iter().for_each(|r| found(*r));
        }
        let Some(level) = levels.get(i) else {
            self.end.iter().for_each(|r| found(*r));
            return;
        };
        if let Some(n) = self.literal.get(*level) {
            n.walk(levels, i + 1, c, found);
        }
        if let Some(n) = &self.plus {
            if !dollar {
                n.walk(levels, i + 1, c, found);
            }
        }
        for (parts, n) in &self.vars {
            if Level::matches_vars(parts, level, c) {
                n.walk(levels, i + 1, c, found);
            }
        }
    }
}

/// A decision and the rule that made it (None: `no_match`).
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allow: bool,
    pub policy: Option<Arc<Policy>>,
}

/// What the dry run answers.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Explained {
    /// `allow` or `deny`.
    pub decision: &'static str,
    /// SUBSCRIBE: `allow`, `checked` (allowed; some topics it matches are
    /// not delivered) or `deny`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription: Option<&'static str>,
    /// The deciding policy's id; none when `no_match` decided.
    pub policy_id: Option<String>,
    pub priority: Option<i64>,
    /// `policy` or `no_match`.
    pub decided_by: &'static str,
}

/// The policies in force, compiled; immutable (a change builds a new one).
#[derive(Debug, Default)]
pub struct PolicySet {
    rules: Vec<Rule>,
    publish: Node,
    subscribe: Node,
    /// Rules without `topics`, per action (they match every topic).
    publish_any: Vec<u32>,
    subscribe_any: Vec<u32>,
    no_match: NoMatch,
    deny_action: DenyAction,
}

impl PolicySet {
    /// Compiles `policies` (any order; sorted by priority, ties by their
    /// order here).
    pub fn new(policies: Vec<Arc<Policy>>, no_match: NoMatch, deny_action: DenyAction) -> Self {
        let mut indexed: Vec<(usize, Arc<Policy>)> = policies.into_iter().enumerate().collect();
        indexed.sort_by_key(|(i, p)| (p.priority, *i));
        let rules: Vec<Rule> = indexed.into_iter().map(|(_, p)| Rule::compile(p)).collect();
        let mut set = PolicySet {
            no_match,
            deny_action,
            ..PolicySet::default()
        };
        for (i, r) in rules.iter().enumerate() {
            let i = i as u32;
            for (action, trie, any) in [
                (Action::Publish, &mut set.publish, &mut set.publish_any),
                (
                    Action::Subscribe,
                    &mut set.subscribe,
                    &mut set.subscribe_any,
                ),
            ] {
                if r.actions & action.bit() == 0 {
                    continue;
                }
                if r.any_topic() {
                    any.push(i);
                } else {
                    r.templates.iter().for_each(|t| trie.insert(t, i));
                }
            }
        }
        set.rules = rules;
        set
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub fn no_match(&self) -> NoMatch {
        self.no_match
    }

    fn default_allows(&self) -> bool {
        self.no_match == NoMatch::Allow
    }

    fn decided(&self, rule: Option<u32>) -> Decision {
        self.decided_on(rule, false)
    }

    /// `system`: the topic is the broker's own (`$SYS/...`), which only a
    /// policy opens: `no_match` does not allow it (SPEC 14).
    fn decided_on(&self, rule: Option<u32>, system: bool) -> Decision {
        match rule.and_then(|i| self.rules.get(i as usize)) {
            Some(r) => Decision {
                allow: r.policy.effect == Effect::Allow,
                policy: Some(r.policy.clone()),
            },
            None => Decision {
                allow: self.default_allows() && !system,
                policy: None,
            },
        }
    }

    /// A topic decision (publish, or a delivery for `Action::Subscribe`)
    /// through the trie.
    pub fn decide_topic(
        &self,
        action: Action,
        c: &ClientFacts,
        topic: &str,
        qos: Option<QoS>,
        retain: Option<bool>,
    ) -> Decision {
        let (trie, any) = match action {
            Action::Publish => (&self.publish, &self.publish_any),
            _ => (&self.subscribe, &self.subscribe_any),
        };
        let system = is_system(topic);
        if self.rules.is_empty() {
            return self.decided_on(None, system);
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let mut best: Option<u32> = None;
        let rules = &self.rules;
        let mut consider = |i: u32| {
            if best.is_some_and(|b| b <= i) {
                return;
            }
            if rules
                .get(i as usize)
                .is_some_and(|r| r.applies(action, c, qos, retain))
            {
                best = Some(i);
            }
        };
        any.iter().for_each(|i| consider(*i));
        trie.walk(&levels, 0, c, &mut consider);
        self.decided_on(best, system)
    }

    /// The same decision by a scan of every rule in order (the oracle).
    pub fn decide_topic_naive(
        &self,
        action: Action,
        c: &ClientFacts,
        topic: &str,
        qos: Option<QoS>,
        retain: Option<bool>,
    ) -> Decision {
        let found = self.rules.iter().position(|r| {
            r.applies(action, c, qos, retain)
                && (r.any_topic() || r.filters(c).iter().any(|f| filters::matches(f, topic)))
        });
        self.decided_on(found.map(|i| i as u32), is_system(topic))
    }

    pub fn decide_connect(&self, c: &ClientFacts) -> Decision {
        let found = self
            .rules
            .iter()
            .position(|r| r.applies(Action::Connect, c, None, None));
        self.decided(found.map(|i| i as u32))
    }

    /// SUBSCRIBE to `filter` (no `$share/` prefix).
    pub fn decide_subscribe(
        &self,
        c: &ClientFacts,
        filter: &str,
        qos: QoS,
    ) -> (SubscribeVerdict, Option<Arc<Policy>>) {
        let mut partial_deny = false;
        for r in &self.rules {
            if !r.applies(Action::Subscribe, c, Some(qos), None) {
                continue;
            }
            let fs = r.filters(c);
            let covers = r.any_topic() || fs.iter().any(|f| filters::covers(f, filter));
            if covers {
                let verdict = match (r.policy.effect, partial_deny) {
                    (Effect::Deny, _) => SubscribeVerdict::Deny,
                    (Effect::Allow, false) => SubscribeVerdict::Allow,
                    (Effect::Allow, true) => SubscribeVerdict::Checked,
                };
                return (verdict, Some(r.policy.clone()));
            }
            if r.policy.effect == Effect::Deny && fs.iter().any(|f| filters::intersect(f, filter)) {
                partial_deny = true;
            }
        }
        let verdict = match (self.no_match, partial_deny) {
            _ if is_system(filter) => SubscribeVerdict::Deny,
            (NoMatch::Deny, _) => SubscribeVerdict::Deny,
            (NoMatch::Allow, false) => SubscribeVerdict::Allow,
            (NoMatch::Allow, true) => SubscribeVerdict::Checked,
        };
        (verdict, None)
    }

    /// The dry run: which policy decides `action` on `topic` for `c`.
    pub fn explain(
        &self,
        c: &ClientFacts,
        action: Action,
        topic: Option<&str>,
        qos: QoS,
        retain: bool,
    ) -> Explained {
        let (decision, subscription) = match (action, topic) {
            (Action::Connect, _) | (_, None) => (self.decide_connect(c), None),
            (Action::Publish, Some(t)) => (
                self.decide_topic(Action::Publish, c, t, Some(qos), Some(retain)),
                None,
            ),
            (Action::Subscribe, Some(f)) => {
                let (v, policy) = self.decide_subscribe(c, f, qos);
                let word = match v {
                    SubscribeVerdict::Allow => "allow",
                    SubscribeVerdict::Checked => "checked",
                    SubscribeVerdict::Deny => "deny",
                };
                (
                    Decision {
                        allow: v != SubscribeVerdict::Deny,
                        policy,
                    },
                    Some(word),
                )
            }
        };
        Explained {
            decision: if decision.allow { "allow" } else { "deny" },
            subscription,
            policy_id: decision.policy.as_ref().map(|p| p.id.clone()),
            priority: decision.policy.as_ref().map(|p| p.priority),
            decided_by: if decision.policy.is_some() {
                "policy"
            } else {
                "no_match"
            },
        }
    }

    pub fn deny_action(&self) -> DenyAction {
        self.deny_action
    }
}

/// The broker's own topics (`$SYS/...`, where lifecycle events are
/// published): readable and writable only where a policy says so.
pub fn is_system(topic: &str) -> bool {
    topic.starts_with("$SYS/") || topic == "$SYS"
}
