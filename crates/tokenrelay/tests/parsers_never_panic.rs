//! Property test: whatever a source answers (arbitrary bytes, or a known shape carrying a JSON
//! number of any size, sign or form), the output and token-response parsers return a value or
//! an error, never panic, and a token built from the answer expires no later than
//! `MAX_TOKEN_LIFETIME` after it was obtained, including once it is in the cache.
//!
//! A seeded generator (same cases on every run), 20 000 cases, well under a second in a
//! debug build.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenrelay::source::http::{parse_token_response, IdpResponse};
use tokenrelay::source::output::{parse, OutputFormat};
use tokenrelay::{
    Cache, CacheOptions, Error, ErrorKind, Result, Source, Token, TokenRequest, MAX_TOKEN_LIFETIME,
};

const CASES: usize = 20_000;

/// A JSON number (or something in a number's place) in one of the forms a broken or hostile
/// source might send.
fn number(rng: &mut StdRng) -> String {
    match rng.gen_range(0..14) {
        0 => rng.gen::<u64>().to_string(),
        1 => rng.gen::<i64>().to_string(),
        2 => format!("{}", rng.gen::<f64>() * 10f64.powi(rng.gen_range(0..20))),
        3 => format!(
            "{}e{}",
            rng.gen_range(-9.0..9.0f64),
            rng.gen_range(-400..400)
        ),
        4 => "1e308".into(),
        5 => "-1e308".into(),
        6 => (0..rng.gen_range(20..40))
            .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
            .collect(),
        7 => [
            "0",
            "-0",
            "0.0",
            "-0.0",
            "0.5",
            "1e-7",
            "18446744073709551615",
        ][rng.gen_range(0..7)]
        .into(),
        8 => format!("\"{}\"", rng.gen::<u64>()),
        9 => format!(
            "\"{}\"",
            ["NaN", "inf", "-inf", "1e400", "-5", " 42 ", "", "soon", "0x10"][rng.gen_range(0..9)]
        ),
        10 => ["null", "true", "[]", "{}"][rng.gen_range(0..4)].into(),
        11 => rng.gen_range(0..4_000_000_000u64).to_string(),
        12 => (rng.gen_range(0..4_000_000_000_000u64)).to_string(),
        _ => format!("{}.{}", rng.gen::<u32>(), rng.gen::<u32>()),
    }
}

/// An RFC 3339-ish time with a year of any size.
fn timestamp(rng: &mut StdRng) -> String {
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}{}",
        rng.gen_range(0..100_000),
        rng.gen_range(0..14),
        rng.gen_range(0..33),
        rng.gen_range(0..25),
        rng.gen_range(0..61),
        rng.gen_range(0..61),
        ["Z", "+00:00", "", "+05:00", ".123Z"][rng.gen_range(0..5)]
    )
}

/// A JWT whose `exp` is `exp` as written (any JSON, not only a number).
fn jwt_with_exp(exp: &str) -> String {
    // {"alg":"RS256","typ":"JWT"}; the signature is never checked
    const HEADER: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";
    let payload =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"exp":{exp}}}"#));
    format!("{HEADER}.{payload}.c2ln")
}

/// One source answer: raw bytes, or a known shape with odd numbers in it.
fn answer(rng: &mut StdRng) -> String {
    let n = number(rng);
    match rng.gen_range(0..10) {
        0 => {
            let bytes: Vec<u8> = (0..rng.gen_range(0..80)).map(|_| rng.gen()).collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        1 => format!(r#"{{"access_token":"a","expires_in":{n}}}"#),
        2 => format!(
            r#"{{"access_token":"a","expires_on":{n},"expires_in":{}}}"#,
            number(rng)
        ),
        3 => format!(r#"{{"token":"a","expiresOnTimestamp":{n}}}"#),
        4 => format!(r#"{{"accessToken":"a","expires_on":{n}}}"#),
        5 => format!(
            r#"{{"kind":"ExecCredential","status":{{"token":"a","expirationTimestamp":"{}"}}}}"#,
            timestamp(rng)
        ),
        6 => format!(
            r#"{{"AccessKeyId":"A","SecretAccessKey":"s","SessionToken":"t","Expiration":"{}"}}"#,
            timestamp(rng)
        ),
        7 => jwt_with_exp(&n),
        8 => format!(r#"{{"access_token":"{}"}}"#, jwt_with_exp(&n)),
        _ => {
            // a shape cut short or with bytes flipped
            let mut s = format!(r#"{{"access_token":"a","expires_in":{n}}}"#).into_bytes();
            let cut = rng.gen_range(0..=s.len());
            s.truncate(cut);
            if let Some(b) = s.iter_mut().last() {
                *b = rng.gen();
            }
            String::from_utf8_lossy(&s).into_owned()
        }
    }
}

/// A default lifetime of any size, as a config could give.
fn ttl(rng: &mut StdRng) -> Duration {
    match rng.gen_range(0..4) {
        0 => Duration::MAX,
        1 => Duration::ZERO,
        2 => Duration::from_secs(rng.gen()),
        _ => Duration::from_secs(rng.gen_range(1..100_000)),
    }
}

fn assert_capped(t: &Token, now: SystemTime, answer: &str) {
    if let Some(exp) = t.expiry() {
        assert!(exp <= now + MAX_TOKEN_LIFETIME, "{answer:?}: {exp:?}");
    }
}

/// Parses its answer at each acquisition, the way the command and plugin sources do.
#[derive(Debug)]
struct Answering(String);

#[async_trait]
impl Source for Answering {
    async fn acquire(&self, _req: &TokenRequest) -> Result<Token> {
        let now = SystemTime::now();
        parse(&self.0, OutputFormat::Auto)
            .map(|p| p.into_token("answering", now, Some(Duration::MAX)))
            .map_err(|e| Error::new("answering", ErrorKind::InvalidResponse(e)))
    }
    fn kind(&self) -> &'static str {
        "answering"
    }
    fn describe(&self) -> String {
        "answering source".into()
    }
}

#[tokio::test]
async fn no_answer_panics_or_outlives_the_cap() {
    let mut rng = StdRng::seed_from_u64(13);
    let mut accepted = 0;
    for i in 0..CASES {
        let text = answer(&mut rng);
        let now = SystemTime::now();
        for format in [
            OutputFormat::Auto,
            OutputFormat::Raw,
            OutputFormat::Jwt,
            OutputFormat::Json,
            OutputFormat::ExecCredential,
        ] {
            if let Ok(p) = parse(&text, format) {
                accepted += 1;
                let t = p.into_token("o", now, Some(ttl(&mut rng)));
                assert_capped(&t, now, &text);
            }
        }
        let resp = IdpResponse {
            status: if rng.gen_bool(0.9) {
                200
            } else {
                rng.gen_range(100..600)
            },
            body: text.clone().into_bytes().into(),
        };
        if let Ok(r) = parse_token_response(&resp, now) {
            let t = r.into_token("o".into(), now, ttl(&mut rng));
            assert_capped(&t, now, &text);
        }
        // Every 20th answer also goes through a cache, whose refresh plan must stay sane.
        if i % 20 == 0 {
            let cache = Cache::new(Arc::new(Answering(text.clone()))).with_options({
                let mut o = CacheOptions::default();
                o.background_refresh = false;
                o
            });
            let entry = cache.entry(TokenRequest::new("p"));
            if let Ok(t) = entry.get().await {
                // capped against the time of acquisition, which is before now
                let after = SystemTime::now();
                assert_capped(t.token(), after, &text);
                assert!(t.refresh_at() <= after + MAX_TOKEN_LIFETIME, "{text:?}");
            }
            let _ = entry.status();
        }
    }
    // The generator reaches the success paths too, not only the errors.
    assert!(accepted > CASES / 4, "only {accepted} answers parsed");
}
