//! The scenarios: what each one asks of the server, one request at a time. A scenario is a
//! pure function from the workload (application, chats, known messages) and a random
//! generator to the next request; `runner` decides when to send it.

use bytes::Bytes;
use clap::ValueEnum;
use http::Method;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Scenario {
    /// POST a chat into the application.
    CreateChat,
    /// POST messages into one hot chat.
    CreateMessage,
    /// POST messages spread over the spread chats (1,000 by default).
    CreateMessageSpread,
    /// GET one message of the hot chat, at random.
    GetMessage,
    /// GET page 1 of the hot chat's messages.
    List,
    /// GET messages with `before=` deep in the hot chat's history (keyset).
    DeepListBefore,
    /// GET messages with `page=` deep (offset; 500 by default).
    DeepListPage,
    /// GET a search for one word in the hot chat.
    Search,
    /// 90% reads (45% get-message, 45% list) and 10% writes (create-message-spread).
    Mix,
    /// create-message, and every Nth 201 is followed by GET until 200: the lag in its own
    /// histogram.
    PersistLag,
    /// GET /health: the server's own floor, as a scenario.
    Health,
}

impl Scenario {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::CreateChat => "create-chat",
            Scenario::CreateMessage => "create-message",
            Scenario::CreateMessageSpread => "create-message-spread",
            Scenario::GetMessage => "get-message",
            Scenario::List => "list",
            Scenario::DeepListBefore => "deep-list-before",
            Scenario::DeepListPage => "deep-list-page",
            Scenario::Search => "search",
            Scenario::Mix => "mix",
            Scenario::PersistLag => "persist-lag",
            Scenario::Health => "health",
        }
    }

    /// Whether the scenario reads the hot chat's messages (so some must exist).
    pub fn reads_messages(self) -> bool {
        matches!(
            self,
            Scenario::GetMessage
                | Scenario::List
                | Scenario::DeepListBefore
                | Scenario::DeepListPage
                | Scenario::Search
                | Scenario::Mix
        )
    }

    /// Whether the scenario writes into the spread chats.
    pub fn spreads(self) -> bool {
        matches!(self, Scenario::CreateMessageSpread | Scenario::Mix)
    }

    pub fn next_call(self, w: &Workload, rng: &mut fastrand::Rng) -> Call {
        match self {
            Scenario::CreateChat => Call::post(
                "create-chat",
                format!("/applications/{}/chats", w.app),
                None,
            ),
            Scenario::CreateMessage => create_message(w, w.hot_chat, rng, "create-message"),
            Scenario::CreateMessageSpread => {
                let chat = w.spread_chats[rng.usize(..w.spread_chats.len())];
                create_message(w, chat, rng, "create-message-spread")
            }
            Scenario::GetMessage => {
                let n = rng.i64(1..=w.hot_messages.max(1));
                Call::get("get-message", format!("{}/{n}", w.messages(w.hot_chat)))
            }
            Scenario::List => Call::get(
                "list",
                format!("{}?page=1&limit=10", w.messages(w.hot_chat)),
            ),
            Scenario::DeepListBefore => {
                // The oldest 1% of the chat: as deep as history goes, where OFFSET would
                // scan everything newer.
                let deep = (w.hot_messages / 100).max(1);
                let before = rng.i64(11..=deep + 11);
                Call::get(
                    "deep-list-before",
                    format!("{}?before={before}&limit=10", w.messages(w.hot_chat)),
                )
            }
            Scenario::DeepListPage => Call::get(
                "deep-list-page",
                format!("{}?page={}&limit=10", w.messages(w.hot_chat), w.deep_page),
            ),
            Scenario::Search => {
                let q = &w.words[rng.usize(..w.words.len())];
                Call::get(
                    "search",
                    format!("{}/search?q={q}&limit=10", w.messages(w.hot_chat)),
                )
            }
            Scenario::Mix => match rng.u32(..100) {
                0..45 => Scenario::GetMessage.next_call(w, rng),
                45..90 => Scenario::List.next_call(w, rng),
                _ => Scenario::CreateMessageSpread.next_call(w, rng),
            },
            Scenario::PersistLag => {
                let mut call = create_message(w, w.hot_chat, rng, "persist-lag");
                call.probe = true;
                call
            }
            Scenario::Health => Call::get("health", "/health".to_owned()),
        }
    }
}

fn create_message(w: &Workload, chat: i64, rng: &mut fastrand::Rng, label: &'static str) -> Call {
    let body = w.bodies[rng.usize(..w.bodies.len())].clone();
    Call::post(label, w.messages(chat), Some(body))
}

/// What the scenarios work on.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Application token.
    pub app: String,
    /// The chat that single-chat scenarios use.
    pub hot_chat: i64,
    /// Messages 1..=this exist in the hot chat.
    pub hot_messages: i64,
    /// Chats that create-message-spread and mix write into.
    pub spread_chats: Vec<i64>,
    /// Ready JSON bodies for creates.
    pub bodies: Vec<Bytes>,
    /// Search terms.
    pub words: Vec<String>,
    /// `page=` of deep-list-page.
    pub deep_page: u32,
}

impl Workload {
    pub fn messages(&self, chat: i64) -> String {
        format!("/applications/{}/chats/{chat}/messages", self.app)
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Call {
    /// The kind of request, for per-kind latency in mixed scenarios.
    pub label: &'static str,
    pub method: Method,
    pub path: String,
    pub body: Option<Bytes>,
    /// A create whose result the persist-lag prober may follow.
    pub probe: bool,
}

impl Call {
    fn get(label: &'static str, path: String) -> Self {
        Self {
            label,
            method: Method::GET,
            path,
            body: None,
            probe: false,
        }
    }

    fn post(label: &'static str, path: String, body: Option<Bytes>) -> Self {
        Self {
            label,
            method: Method::POST,
            path,
            body,
            probe: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload() -> Workload {
        Workload {
            app: "APP".into(),
            hot_chat: 1,
            hot_messages: 10_000,
            spread_chats: (1..=1000).collect(),
            bodies: crate::text::json_bodies(4, 1),
            words: crate::text::vocabulary(),
            deep_page: 500,
        }
    }

    #[test]
    fn scenarios_build_the_documented_requests() {
        let w = workload();
        let mut rng = fastrand::Rng::with_seed(7);
        let call = Scenario::DeepListPage.next_call(&w, &mut rng);
        assert_eq!(
            call.path,
            "/applications/APP/chats/1/messages?page=500&limit=10"
        );
        let call = Scenario::DeepListBefore.next_call(&w, &mut rng);
        let before: i64 = call
            .path
            .split("before=")
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!((11..=111).contains(&before));
        assert!(Scenario::PersistLag.next_call(&w, &mut rng).probe);
        for s in Scenario::value_variants() {
            let value = s.to_possible_value().unwrap();
            assert_eq!(s.name(), value.get_name(), "report names match the CLI");
        }
    }

    #[test]
    fn mix_is_ninety_percent_reads() {
        let w = workload();
        let mut rng = fastrand::Rng::with_seed(3);
        let writes = (0..10_000)
            .filter(|_| Scenario::Mix.next_call(&w, &mut rng).method == Method::POST)
            .count();
        assert!((800..1200).contains(&writes), "{writes} writes of 10,000");
    }
}
