//! Synthetic request-log traffic that looks like a real API platform's: a few dozen route
//! patterns with their own methods and latencies, mostly successes with realistic 4xx/5xx
//! shares and error codes, keys, users, service accounts, auth types, client addresses and
//! user agents, and a daily and weekly rhythm. Deterministic for a given seed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use apitrail_model::{RequestId, RequestLog, Timestamp, new_record_id};

/// One route of the imaginary platform.
struct Route {
    method: &'static str,
    pattern: &'static str,
    /// Typical latency in ms.
    base_ms: f64,
    /// Relative frequency.
    weight: u32,
    /// Status of a success.
    ok: u16,
}

const ROUTES: &[Route] = &[
    Route {
        method: "GET",
        pattern: "/v1/users/{id}",
        base_ms: 28.0,
        weight: 18,
        ok: 200,
    },
    Route {
        method: "GET",
        pattern: "/v1/users",
        base_ms: 45.0,
        weight: 6,
        ok: 200,
    },
    Route {
        method: "POST",
        pattern: "/v1/users",
        base_ms: 85.0,
        weight: 3,
        ok: 201,
    },
    Route {
        method: "PATCH",
        pattern: "/v1/users/{id}",
        base_ms: 60.0,
        weight: 2,
        ok: 200,
    },
    Route {
        method: "DELETE",
        pattern: "/v1/users/{id}",
        base_ms: 40.0,
        weight: 1,
        ok: 204,
    },
    Route {
        method: "GET",
        pattern: "/v1/orders",
        base_ms: 70.0,
        weight: 10,
        ok: 200,
    },
    Route {
        method: "GET",
        pattern: "/v1/orders/{id}",
        base_ms: 33.0,
        weight: 12,
        ok: 200,
    },
    Route {
        method: "POST",
        pattern: "/v1/orders",
        base_ms: 180.0,
        weight: 6,
        ok: 201,
    },
    Route {
        method: "POST",
        pattern: "/v1/orders/{id}/refunds",
        base_ms: 260.0,
        weight: 1,
        ok: 201,
    },
    Route {
        method: "GET",
        pattern: "/v1/invoices",
        base_ms: 90.0,
        weight: 4,
        ok: 200,
    },
    Route {
        method: "GET",
        pattern: "/v1/invoices/{id}",
        base_ms: 38.0,
        weight: 5,
        ok: 200,
    },
    Route {
        method: "POST",
        pattern: "/v1/payments",
        base_ms: 320.0,
        weight: 5,
        ok: 201,
    },
    Route {
        method: "GET",
        pattern: "/v1/payments/{id}",
        base_ms: 35.0,
        weight: 4,
        ok: 200,
    },
    Route {
        method: "GET",
        pattern: "/v1/events",
        base_ms: 55.0,
        weight: 8,
        ok: 200,
    },
    Route {
        method: "POST",
        pattern: "/v1/webhooks/test",
        base_ms: 450.0,
        weight: 1,
        ok: 202,
    },
    Route {
        method: "GET",
        pattern: "/v1/search",
        base_ms: 160.0,
        weight: 6,
        ok: 200,
    },
    Route {
        method: "OPTIONS",
        pattern: "/v1/orders",
        base_ms: 2.0,
        weight: 1,
        ok: 204,
    },
    Route {
        method: "HEAD",
        pattern: "/v1/users",
        base_ms: 9.0,
        weight: 1,
        ok: 200,
    },
];

const CLIENT_ERRORS: &[(u16, &str, u32)] = &[
    (400, "invalid_request", 30),
    (401, "unauthorized", 10),
    (403, "forbidden", 6),
    (404, "not_found", 30),
    (409, "conflict", 5),
    (422, "validation_failed", 10),
    (429, "rate_limited", 9),
];

const SERVER_ERRORS: &[(u16, &str, u32)] = &[
    (500, "internal_error", 60),
    (502, "bad_gateway", 15),
    (503, "service_unavailable", 15),
    (504, "gateway_timeout", 10),
];

const USER_AGENTS: &[&str] = &[
    "acme-python/2.4.1 (CPython 3.12.3; Linux)",
    "acme-node/5.0.3 (node 20.12.2)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "curl/8.7.1",
    "Go-http-client/2.0",
    "okhttp/4.12.0",
];

const FIRST_NAMES: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yolanda",
];

/// A user of the imaginary platform.
#[derive(Debug, Clone)]
struct User {
    id: String,
    email: String,
    ip: IpAddr,
}

/// How a caller authenticates.
#[derive(Debug, Clone)]
struct Credential {
    key_id: Option<String>,
    principal_type: &'static str,
    principal_id: String,
    service_account_id: Option<String>,
    user: Option<usize>,
    agent: usize,
}

/// A deterministic source of request logs.
#[derive(Debug)]
pub struct Traffic {
    rng: fastrand::Rng,
    users: Vec<User>,
    keys: Vec<Credential>,
    route_weight: u32,
}

impl Traffic {
    /// Traffic whose API-key calls use synthetic key ids.
    pub fn new(seed: u64) -> Self {
        Self::with_key_ids(seed, Vec::new())
    }

    /// Traffic whose API-key calls use `key_ids` (e.g. real keys of a demo org) beside a few
    /// synthetic ones.
    pub fn with_key_ids(seed: u64, key_ids: Vec<String>) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let users: Vec<User> = (0..40)
            .map(|i| {
                let name = FIRST_NAMES[i % FIRST_NAMES.len()];
                let ip = if i % 5 == 4 {
                    IpAddr::V6(Ipv6Addr::new(
                        0x2001,
                        0xdb8,
                        0,
                        i as u16,
                        0,
                        0,
                        0,
                        rng.u16(1..),
                    ))
                } else {
                    let net = [[192, 0, 2], [198, 51, 100], [203, 0, 113]][i % 3];
                    IpAddr::V4(Ipv4Addr::new(net[0], net[1], net[2], rng.u8(1..255)))
                };
                User {
                    id: format!("usr_{:08x}", rng.u32(..)),
                    email: format!("{name}{}@example.com", i / FIRST_NAMES.len() + 1),
                    ip,
                }
            })
            .collect();
        let mut keys: Vec<Credential> = key_ids
            .into_iter()
            .enumerate()
            .map(|(i, id)| Credential {
                key_id: Some(id),
                principal_type: "service_account",
                principal_id: format!("sa_demo_{i}"),
                service_account_id: Some(format!("sa_demo_{i}")),
                user: None,
                agent: i % 2,
            })
            .collect();
        for (i, name) in ["backend", "billing-sync", "data-pipeline"]
            .iter()
            .enumerate()
        {
            keys.push(Credential {
                key_id: Some(synthetic_uuid(&mut rng)),
                principal_type: "service_account",
                principal_id: format!("sa_{name}"),
                service_account_id: Some(format!("sa_{name}")),
                user: None,
                agent: [0, 5, 6][i],
            });
        }
        for u in 0..8 {
            keys.push(Credential {
                key_id: Some(synthetic_uuid(&mut rng)),
                principal_type: "user",
                principal_id: users[u].id.clone(),
                service_account_id: None,
                user: Some(u),
                agent: [0, 1, 4][u % 3],
            });
        }
        Self {
            rng,
            users,
            keys,
            route_weight: ROUTES.iter().map(|r| r.weight).sum(),
        }
    }

    fn pick_route(&mut self) -> &'static Route {
        let mut n = self.rng.u32(..self.route_weight);
        for r in ROUTES {
            if n < r.weight {
                return r;
            }
            n -= r.weight;
        }
        &ROUTES[0]
    }

    fn pick_error(&mut self, table: &'static [(u16, &'static str, u32)]) -> (u16, &'static str) {
        let total: u32 = table.iter().map(|e| e.2).sum();
        let mut n = self.rng.u32(..total);
        for (status, code, w) in table {
            if n < *w {
                return (*status, code);
            }
            n -= w;
        }
        (table[0].0, table[0].1)
    }

    /// A standard normal sample (Box-Muller).
    fn normal(&mut self) -> f64 {
        let u1 = self.rng.f64().max(1e-12);
        let u2 = self.rng.f64();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    fn resource_id(&mut self, pattern: &str) -> String {
        let prefix = match pattern.split('/').nth(2).unwrap_or("") {
            "users" => return self.users[self.rng.usize(..self.users.len())].id.clone(),
            "orders" => "ord",
            "invoices" => "in",
            "payments" => "pay",
            _ => "obj",
        };
        format!("{prefix}_{:010x}", self.rng.u64(..1 << 40))
    }

    /// One request log created at `at`.
    pub fn log_at(&mut self, at: Timestamp) -> RequestLog {
        let route = self.pick_route();
        let mut path = route.pattern.to_owned();
        if path.contains("{id}") {
            let id = self.resource_id(route.pattern);
            path = path.replace("{id}", &id);
        }
        let roll = self.rng.u32(..1000);
        let (status, error_code) = if route.method == "OPTIONS" {
            (route.ok, None)
        } else if roll < 9 {
            let (s, c) = self.pick_error(SERVER_ERRORS);
            (s, Some(c))
        } else if roll < 75 {
            let (s, c) = self.pick_error(CLIENT_ERRORS);
            (s, Some(c))
        } else {
            (route.ok, None)
        };
        let mut ms = route.base_ms * (0.55 * self.normal()).exp();
        if status >= 500 {
            ms *= if status == 504 { 30.0 } else { 3.0 };
        } else if status == 429 || status == 401 {
            ms = 1.0 + self.rng.f64() * 3.0;
        }
        let duration = ms.round().max(0.0) as i64;
        let query = (route.method == "GET" && !route.pattern.ends_with("{id}") && self.rng.bool())
            .then(|| format!("limit={}", [10, 20, 50, 100][self.rng.usize(..4)]));

        let auth_roll = self.rng.u32(..100);
        let mut log = RequestLog {
            id: new_record_id(),
            request_id: Some(RequestId::generate_at(at).as_str().to_owned()),
            method: route.method.to_owned(),
            path,
            query,
            route_pattern: Some(route.pattern.to_owned()),
            status_code: status,
            error_code: error_code.map(str::to_owned),
            duration_ms: Some(duration),
            started_at: Some(at),
            completed_at: Some(at.add_millis(duration)),
            created_at: at,
            ..RequestLog::default()
        };
        if route.method == "OPTIONS" || status == 401 {
            log.client_ip = Some(self.users[self.rng.usize(..self.users.len())].ip);
            log.user_agent = Some(USER_AGENTS[self.rng.usize(..USER_AGENTS.len())].to_owned());
            return log;
        }
        if auth_roll < 70 {
            let cred = self.keys[self.rng.usize(..self.keys.len())].clone();
            let user = cred.user.map(|u| self.users[u].clone());
            log.auth_type = Some("api_key".into());
            log.api_key_id = cred.key_id;
            log.principal_type = Some(cred.principal_type.into());
            log.principal_id = Some(cred.principal_id);
            log.service_account_id = cred.service_account_id;
            log.user_agent = Some(USER_AGENTS[cred.agent].to_owned());
            match user {
                Some(u) => {
                    log.user_id = Some(u.id);
                    log.email = Some(u.email);
                    log.client_ip = Some(u.ip);
                }
                None => {
                    log.client_ip = Some(IpAddr::V4(Ipv4Addr::new(
                        203,
                        0,
                        113,
                        10 + cred.agent as u8,
                    )));
                }
            }
        } else {
            let u = self.users[self.rng.usize(..self.users.len())].clone();
            let session = auth_roll < 90;
            log.auth_type = Some(if session { "session" } else { "jwt" }.into());
            log.principal_type = Some("user".into());
            log.principal_id = Some(u.id.clone());
            log.user_id = Some(u.id);
            log.email = Some(u.email);
            log.client_ip = Some(u.ip);
            log.user_agent =
                Some(USER_AGENTS[if session { 2 + self.rng.usize(..2) } else { 1 }].to_owned());
            if session {
                log.origin = Some("https://dashboard.example.com".into());
            }
        }
        if route.pattern == "/v1/payments" && status == 201 {
            log.price = Some(format!(
                "{}.{:02}",
                self.rng.u32(1..500),
                self.rng.u32(..100)
            ));
            log.seconds = Some(duration / 1000);
            log.minutes = Some(duration / 60_000);
        }
        log
    }

    /// `n` logs spread over `[from, to)` with a daily and weekly rhythm, oldest first.
    pub fn spread(&mut self, n: usize, from: Timestamp, to: Timestamp) -> Vec<RequestLog> {
        let span = (to.millis() - from.millis()).max(1);
        let mut times = Vec::with_capacity(n);
        while times.len() < n {
            let t = from.millis() + self.rng.i64(0..span);
            let hour = (t / 3_600_000) % 24;
            let weekday = (t / 86_400_000 + 4) % 7; // 1970-01-01 was a Thursday.
            let daily = 0.25 + 0.75 * (-((hour as f64 - 14.0) / 4.5).powi(2)).exp();
            let weekly = if weekday >= 5 { 0.45 } else { 1.0 };
            if self.rng.f64() < daily * weekly {
                times.push(t);
            }
        }
        times.sort_unstable();
        times
            .into_iter()
            .filter_map(Timestamp::from_millis)
            .map(|t| self.log_at(t))
            .collect()
    }
}

fn synthetic_uuid(rng: &mut fastrand::Rng) -> String {
    let v = rng.u128(..);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traffic_is_realistic_and_deterministic_in_shape() {
        let from = Timestamp::from_millis(1_700_000_000_000).unwrap();
        let to = from.add_millis(30 * 86_400_000);
        let logs = Traffic::new(7).spread(5000, from, to);
        assert_eq!(logs.len(), 5000);
        assert!(logs.windows(2).all(|w| w[0].created_at <= w[1].created_at));
        assert!(
            logs.iter()
                .all(|l| l.created_at >= from && l.created_at < to)
        );
        let errors = logs.iter().filter(|l| l.status_code >= 400).count();
        assert!((100..900).contains(&errors), "{errors} errors");
        let server = logs.iter().filter(|l| l.status_code >= 500).count();
        assert!(server > 0 && server < errors);
        let routes: std::collections::HashSet<_> = logs
            .iter()
            .map(|l| (l.method.clone(), l.route_pattern.clone()))
            .collect();
        assert_eq!(routes.len(), ROUTES.len());
        let methods: std::collections::HashSet<_> = logs.iter().map(|l| l.method.clone()).collect();
        assert!(methods.len() >= 6);
        assert!(logs.iter().all(|l| !l.path.contains('{')));
        assert!(
            logs.iter()
                .any(|l| l.auth_type.as_deref() == Some("session"))
        );
        assert!(
            logs.iter()
                .any(|l| l.client_ip.is_some_and(|ip| ip.is_ipv6()))
        );
        let again = Traffic::new(7).spread(5000, from, to);
        assert_eq!(
            logs.iter()
                .map(|l| (l.path.clone(), l.status_code))
                .collect::<Vec<_>>(),
            again
                .iter()
                .map(|l| (l.path.clone(), l.status_code))
                .collect::<Vec<_>>()
        );
    }
}
