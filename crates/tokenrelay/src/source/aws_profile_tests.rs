//! Tests of the profile resolution (beside `aws_profile.rs`, kept apart for its length).

use std::sync::Arc;

use super::*;
use crate::source::aws_ini::parse;
use crate::source::MapEnv;

fn files(config: &str, credentials: &str) -> AwsFiles {
    let config_map = parse(config)
        .unwrap()
        .into_iter()
        .filter_map(|(k, v)| {
            if k == "default" {
                Some((k, v))
            } else {
                k.strip_prefix("profile ").map(|n| (n.to_owned(), v))
            }
        })
        .collect();
    AwsFiles {
        config_path: "/h/.aws/config".into(),
        credentials_path: "/h/.aws/credentials".into(),
        config: config_map,
        credentials: parse(credentials).unwrap(),
    }
}

fn env(pairs: &[(&str, &str)]) -> SharedEnv {
    Arc::new(MapEnv::from_pairs(pairs.iter().copied()))
}

fn plan(f: &AwsFiles, e: &SharedEnv, profile: &str, chosen: Chosen) -> String {
    match resolve(f, e, profile, chosen, 1700000000) {
        Ok(Some(p)) => show(&p),
        Ok(None) => "none".into(),
        Err((ctx, msg)) => format!("error ({ctx}): {msg}"),
    }
}

/// A compact rendering of a plan, never with secrets.
fn show(p: &Plan) -> String {
    match p {
        Plan::Static { creds, ctx } => format!("static {} [{ctx}]", creds.access_key_id),
        Plan::Process { argv, ctx } => format!("process {argv:?} [{ctx}]"),
        Plan::WebIdentity { role, token_file } => format!(
            "web-identity {} as {} from {} [{}]",
            role.arn,
            role.session_name,
            token_file.display(),
            role.ctx
        ),
        Plan::AssumeRole { role, source } => {
            format!("assume {} <- {}", role.arn, show(source))
        }
        Plan::Container { ctx } => format!("container [{ctx}]"),
        Plan::Imds { ctx } => format!("imds [{ctx}]"),
    }
}

const ENV_KEYS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "AKIAENV"),
    ("AWS_SECRET_ACCESS_KEY", "envsecret"),
];

#[test]
fn order_environment_then_profile_kinds() {
    let f = files(
        "[default]\naws_access_key_id = AKIACONFIG\naws_secret_access_key = s\n[profile p]\ncredential_process = /bin/get-creds --profile \"a b\"\naws_access_key_id = AKIAPCONFIG\naws_secret_access_key = s\n",
        "[default]\naws_access_key_id = AKIACREDS\naws_secret_access_key = s\n",
    );
    // environment keys first, unless the table named the profile
    assert_eq!(
        plan(&f, &env(ENV_KEYS), "default", Chosen::Default),
        "static AKIAENV [environment]"
    );
    assert_eq!(
        plan(&f, &env(ENV_KEYS), "p", Chosen::Env),
        "static AKIAENV [environment]"
    );
    assert!(plan(&f, &env(ENV_KEYS), "p", Chosen::Table).starts_with("process"));
    // the credentials file before the config file
    assert_eq!(
        plan(&f, &env(&[]), "default", Chosen::Default),
        "static AKIACREDS [profile default in /h/.aws/credentials]"
    );
    // credential_process before the config file's keys, split like a shell line
    assert_eq!(
        plan(&f, &env(&[]), "p", Chosen::Env),
        r#"process ["/bin/get-creds", "--profile", "a b"] [profile p in /h/.aws/config]"#
    );
    // nothing: on to the container endpoint and IMDS
    assert_eq!(
        plan(&files("", ""), &env(&[]), "default", Chosen::Default),
        "none"
    );
    // half a pair is an error, not a fall-through
    assert_eq!(
        plan(&f, &env(&[("AWS_ACCESS_KEY_ID", "A")]), "p", Chosen::Env),
        "error (environment): AWS_ACCESS_KEY_ID is set without AWS_SECRET_ACCESS_KEY"
    );
    let half = files("[default]\naws_access_key_id = A\n", "");
    assert_eq!(
        plan(&half, &env(&[]), "default", Chosen::Default),
        "error (profile default in /h/.aws/config): aws_access_key_id without aws_secret_access_key"
    );
}

#[test]
fn a_named_profile_must_exist() {
    let f = files("[profile a]\nregion = x\n", "");
    for chosen in [Chosen::Table, Chosen::Env] {
        assert_eq!(
            plan(&f, &env(&[]), "ci", chosen),
            "error (profile ci): no such profile in /h/.aws/config or /h/.aws/credentials"
        );
    }
    // an existing profile without credentials goes on down the chain (as botocore)
    assert_eq!(plan(&f, &env(&[]), "a", Chosen::Table), "none");
}

#[test]
fn web_identity_from_profile_or_environment() {
    let f = files(
        "[profile wi]\nweb_identity_token_file = /t/token\nrole_arn = arn:aws:iam::1:role/wi\nrole_session_name = s1\n[profile norole]\nweb_identity_token_file = /t/token\n",
        "",
    );
    assert_eq!(
        plan(&f, &env(&[]), "wi", Chosen::Table),
        "web-identity arn:aws:iam::1:role/wi as s1 from /t/token [profile wi in /h/.aws/config]"
    );
    let e = env(&[
        ("AWS_WEB_IDENTITY_TOKEN_FILE", "/var/run/eks/token"),
        ("AWS_ROLE_ARN", "arn:aws:iam::1:role/eks"),
    ]);
    assert_eq!(
        plan(&files("", ""), &e, "default", Chosen::Default),
        "web-identity arn:aws:iam::1:role/eks as tokenrelay-1700000000 from /var/run/eks/token [environment AWS_WEB_IDENTITY_TOKEN_FILE]"
    );
    assert!(plan(&f, &env(&[]), "norole", Chosen::Table).contains("needs role_arn"));
}

#[test]
fn roles_chains_and_sources() {
    let f = files(
        "[profile role]\nrole_arn = arn:aws:iam::1:role/r\nsource_profile = mid\nexternal_id = x\nduration_seconds = 900\n\
         [profile mid]\nrole_arn = arn:aws:iam::1:role/mid\nsource_profile = base\n\
         [profile base]\ncredential_process = get\n\
         [profile self]\nrole_arn = arn:aws:iam::1:role/self\nsource_profile = self\naws_access_key_id = AKIASELF\naws_secret_access_key = s\n\
         [profile env]\nrole_arn = arn:aws:iam::1:role/e\ncredential_source = Environment\n\
         [profile ec2]\nrole_arn = arn:aws:iam::1:role/e\ncredential_source = Ec2InstanceMetadata\n\
         [profile ecs]\nrole_arn = arn:aws:iam::1:role/e\ncredential_source = EcsContainer\n",
        "",
    );
    let e = env(ENV_KEYS);
    assert_eq!(
        plan(&f, &env(&[]), "role", Chosen::Table),
        r#"assume arn:aws:iam::1:role/r <- assume arn:aws:iam::1:role/mid <- process ["get"] [profile base in /h/.aws/config]"#
    );
    assert_eq!(
        plan(&f, &env(&[]), "self", Chosen::Table),
        "assume arn:aws:iam::1:role/self <- static AKIASELF [profile self in /h/.aws/config]"
    );
    assert_eq!(
        plan(&f, &e, "env", Chosen::Table),
        "assume arn:aws:iam::1:role/e <- static AKIAENV [environment]"
    );
    assert!(plan(&f, &env(&[]), "env", Chosen::Table).contains("AWS_ACCESS_KEY_ID is not set"));
    assert!(plan(&f, &env(&[]), "ec2", Chosen::Table)
        .ends_with("<- imds [profile ec2 in /h/.aws/config]"));
    assert!(plan(&f, &env(&[]), "ecs", Chosen::Table)
        .ends_with("<- container [profile ecs in /h/.aws/config]"));
    let Ok(Some(Plan::AssumeRole { role, .. })) = resolve(&f, &env(&[]), "role", Chosen::Table, 0)
    else {
        panic!("not a role");
    };
    assert_eq!(role.external_id.as_deref(), Some("x"));
    assert_eq!(role.duration_seconds, Some(900));
}

#[test]
fn bad_roles_are_refused() {
    let f = files(
        "[profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = b\n\
         [profile b]\nrole_arn = arn:aws:iam::1:role/b\nsource_profile = a\n\
         [profile loop]\nrole_arn = arn:aws:iam::1:role/l\nsource_profile = loop\n\
         [profile none]\nrole_arn = arn:aws:iam::1:role/n\n\
         [profile both]\nrole_arn = arn:aws:iam::1:role/n\nsource_profile = a\ncredential_source = Environment\n\
         [profile gone]\nrole_arn = arn:aws:iam::1:role/n\nsource_profile = nowhere\n\
         [profile bad]\nrole_arn = arn:aws:iam::1:role/n\ncredential_source = Magic\n\
         [profile mfa]\nrole_arn = arn:aws:iam::1:role/n\nsource_profile = a\nmfa_serial = arn:aws:iam::1:mfa/u\n\
         [profile empty]\nrole_arn = arn:aws:iam::1:role/n\nsource_profile = nocreds\n[profile nocreds]\nregion = x\n\
         [profile sso]\nsso_session = corp\n\
         [profile dur]\nrole_arn = arn:aws:iam::1:role/n\nsource_profile = self2\nduration_seconds = 1h\n[profile self2]\naws_access_key_id = A\naws_secret_access_key = s\n",
        "",
    );
    let e = env(&[]);
    let cases = [
        (
            "a",
            "(profile b in /h/.aws/config): source_profile loops: a -> b -> a",
        ),
        (
            "loop",
            "(profile loop in /h/.aws/config): source_profile loops: loop -> loop",
        ),
        ("none", "role_arn needs source_profile or credential_source"),
        ("both", "not both"),
        ("gone", "source_profile nowhere does not exist"),
        ("bad", r#"credential_source "Magic" is not one of"#),
        ("mfa", "mfa_serial"),
        (
            "empty",
            "(profile nocreds in /h/.aws/config): the source profile has no credentials",
        ),
        ("sso", "IAM Identity Center"),
        ("dur", "duration_seconds is not a whole number"),
    ];
    for (profile, want) in cases {
        let got = plan(&f, &e, profile, Chosen::Table);
        assert!(
            got.starts_with("error") && got.contains(want),
            "{profile}: {got}"
        );
    }
    // a long chain stops at the depth bound
    let mut text = String::new();
    for i in 0..20 {
        text.push_str(&format!(
            "[profile p{i}]\nrole_arn = arn:aws:iam::1:role/{i}\nsource_profile = p{}\n",
            i + 1
        ));
    }
    let got = plan(&files(&text, ""), &e, "p0", Chosen::Table);
    assert!(got.contains("deeper than 8 profiles"), "{got}");
}

#[test]
fn sts_endpoints() {
    let f = files(
        "[default]\nregion = eu-west-1\n[profile legacy]\nregion = eu-west-1\nsts_regional_endpoints = legacy\n[profile far]\nregion = ap-east-1\nsts_regional_endpoints = legacy\n[profile cn]\nregion = cn-north-1\n[profile url]\nendpoint_url = http://127.0.0.1:5000\n[profile odd]\nsts_regional_endpoints = sometimes\nregion = us-east-1\n[profile r]\nregion = us/east\n",
        "",
    );
    let none = env(&[]);
    let ep = |p: &str, e: &SharedEnv| {
        sts(&f, e, p)
            .map(|s| format!("{} {}", s.endpoint, s.region))
            .unwrap_or_else(|(_, m)| m)
    };
    assert_eq!(
        ep("default", &none),
        "https://sts.eu-west-1.amazonaws.com/ eu-west-1"
    );
    assert_eq!(ep("legacy", &none), "https://sts.amazonaws.com/ us-east-1");
    assert_eq!(
        ep("far", &none),
        "https://sts.ap-east-1.amazonaws.com/ ap-east-1"
    );
    assert_eq!(
        ep("cn", &none),
        "https://sts.cn-north-1.amazonaws.com.cn/ cn-north-1"
    );
    assert_eq!(ep("url", &none), "http://127.0.0.1:5000 us-east-1");
    assert_eq!(ep("nothing", &none), "https://sts.amazonaws.com/ us-east-1");
    assert!(ep("odd", &none).contains("not regional or legacy"));
    assert_eq!(ep("r", &none), "region is not a region name");
    let e = env(&[
        ("AWS_REGION", "us-west-2"),
        ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:1"),
    ]);
    assert_eq!(ep("default", &e), "http://127.0.0.1:1 us-west-2");
    let e = env(&[
        ("AWS_ENDPOINT_URL_STS", "http://127.0.0.1:1"),
        ("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true"),
    ]);
    assert_eq!(
        ep("default", &e),
        "https://sts.eu-west-1.amazonaws.com/ eu-west-1"
    );
}
