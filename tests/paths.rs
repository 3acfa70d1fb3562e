//! Request paths over real sockets: every request's path is put in normal form once,
//! before routing and modules (`http::path`), and the upstream gets that path — so a
//! policy on `/admin` (a pcmod guard, a `[[routes]] path_prefix`, a `std.url_rewrite`)
//! cannot be walked around with `/n/../admin`, `/n/%2e%2e/admin`, `/%61dmin` or
//! `//admin`, which an upstream such as nginx resolves to `/admin`. HTTP/1.1 (raw
//! request lines, so the bytes are exactly the test's) and HTTP/2 alike; paths modules
//! set are normalised too.

mod common;

use std::net::SocketAddr;

use common::*;

/// A site with `mods` (`NAME.pcmod` text) and `files` (e.g. `NAME.lua`), `server` keys
/// inside `[server]`, and one route per `(prefix, upstream)` (an empty prefix is a
/// catch-all); started in-process.
fn site(
    mods: &[(&str, &str)],
    files: &[(&str, &str)],
    server: &str,
    routes: &[(&str, &Upstream)],
) -> (Site, Running) {
    let site = Site::new("paths");
    for (name, text) in mods {
        site.write_mod(name, text);
    }
    for (name, text) in files {
        std::fs::write(site.mods_dir().join(name), text).expect("write a file under mods/");
    }
    let mut rest = String::new();
    for (i, (prefix, up)) in routes.iter().enumerate() {
        let prefix = if prefix.is_empty() {
            String::new()
        } else {
            format!("path_prefix = \"{prefix}\"\n")
        };
        rest.push_str(&format!(
            "[upstreams.u{i}]\nservers = [\"{}\"]\n\n[[routes]]\n{prefix}upstream = \"u{i}\"\n\n",
            up.addr
        ));
    }
    site.write_config(&format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\nworkers = 1\n{server}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [scripts]\ndir = \"mods\"\nwatch = false\n\n{rest}"
    ));
    let run = Running::start(&site);
    (site, run)
}

/// `GET target` as written, on its own connection: (status, `x-request-id`, body).
async fn get_raw(addr: SocketAddr, target: &str) -> (u16, Option<String>, String) {
    let raw = raw_request(
        addr,
        format!("GET {target} HTTP/1.1\r\nHost: {TEST_HOST}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    (
        raw_status(&raw),
        raw_header(&raw, "x-request-id"),
        raw_body(&raw).to_owned(),
    )
}

/// The path and query the upstream got for `target` (which must be proxied with 200).
async fn upstream_saw(addr: SocketAddr, up: &Upstream, target: &str) -> String {
    let before = up.requests();
    let (status, _, body) = get_raw(addr, target).await;
    assert_eq!(status, 200, "{target}: {body}");
    assert_eq!(up.requests(), before + 1, "{target}");
    up.last().map(|r| r.uri).unwrap_or_default()
}

/// `GET http://test.local{path}` over HTTP/2 with prior knowledge.
async fn get_h2(addr: SocketAddr, path: &str) -> Resp {
    let uri = format!("http://{TEST_HOST}{path}");
    send_h2(addr, empty(http::Request::get(uri.as_str()))).await
}

const GUARD: &str = r#"mod guard {
  on request {
    if $path starts_with "/admin" {
      respond 403 "no\n"
    }
  }
}
"#;

/// Every way the review walked around a `/admin` guard, and a few more: each is
/// refused (403 by the guard, or 400 for a path with no normal form), none reaches
/// the upstream.
const AROUND_THE_GUARD: &[&str] = &[
    "/admin/x",
    "/n/../admin/x",
    "/n/%2e%2e/admin/x",
    "/n/.%2E/admin/x",
    "/%61dmin/x",
    "/%61%64%6D%69%6E/x",
    "//admin/x",
    "/./admin/x",
    "/n/./../admin/x",
    "/n/..%2Fadmin/x",
    "/n/%2e%2e%2fadmin/x",
    "/../admin/x",
    "/n/../../admin/x",
    // A bare `%` before escapes of hex digits: decoded once, these would become
    // `%61dmin` and `%2e%2e`, which the upstream decodes again.
    "/%%36%31dmin/x",
    "/x/%%32%65%%32%65/admin/x",
    "/adm%%36%39n/x",
];

// ---- the rules, as the upstream sees them -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapes_of_unreserved_characters_and_dot_segments_reach_the_upstream_resolved() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let (_site, run) = site(&[], &[], "", &[("", &up)]);
    for (sent, got) in [
        ("/%61dmin/x", "/admin/x"),
        ("/A%7e%2D%5f%30", "/A~-_0"),
        ("/n/%2e%2e/admin/x", "/admin/x"),
        ("/n/.%2E/admin/x", "/admin/x"),
        ("/n/../admin/x", "/admin/x"),
        ("/a/./b/../c", "/a/c"),
        ("/a/b/..", "/a/"),
        // Other escapes, `%2F` among them, are kept as sent.
        ("/keep/a%2Fb/%20/%2f/%25", "/keep/a%2Fb/%20/%2f/%25"),
        ("/.well-known/a..b/.c", "/.well-known/a..b/.c"),
    ] {
        assert_eq!(upstream_saw(run.addr, &up, sent).await, got, "{sent}");
    }
    // Absolute-form: the path part is normalised, the authority is the host.
    assert_eq!(
        upstream_saw(run.addr, &up, &format!("http://{TEST_HOST}/a/../b")).await,
        "/b"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_query_is_left_byte_for_byte() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let (_site, run) = site(&[], &[], "", &[("", &up)]);
    for (sent, got) in [
        ("/a?x=/../", "/a?x=/../"),
        ("/a/../b?x=/../&y=%2e%2e//", "/b?x=/../&y=%2e%2e//"),
        ("/q/%61?%61=/./", "/q/a?%61=/./"),
        ("//a?", "/a?"),
    ] {
        assert_eq!(upstream_saw(run.addr, &up, sent).await, got, "{sent}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_path_above_the_root_is_answered_400_with_a_request_id() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let (_site, run) = site(&[], &[], "", &[("", &up)]);
    for target in [
        "/..",
        "/../x",
        "/a/../../x",
        "/%2e%2e/x",
        "/a/.%2e/%2E./x",
        // `..` beside an encoded slash: nginx decodes `%2F` and resolves it.
        "/n/..%2Fadmin/x",
        "/n%2F..%2Fadmin",
        "/n/x%2F..",
    ] {
        let (status, id, body) = get_raw(run.addr, target).await;
        assert_eq!(status, 400, "{target}: {body}");
        let id = id.unwrap_or_else(|| panic!("{target}: no x-request-id"));
        assert!(body.contains(&id), "{target}: {body}");
    }
    assert_eq!(up.requests(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_of_slashes_merge_unless_merge_slashes_is_false() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let (_site, run) = site(&[], &[], "", &[("", &up)]);
    assert_eq!(upstream_saw(run.addr, &up, "//admin///x").await, "/admin/x");
    assert_eq!(upstream_saw(run.addr, &up, "/a//../b").await, "/b");

    let kept = Upstream::start("kept", Behavior::echo()).await;
    let (_site, run) = site(&[], &[], "merge_slashes = false", &[("", &kept)]);
    assert_eq!(
        upstream_saw(run.addr, &kept, "//admin///x").await,
        "//admin///x"
    );
    // Dot-segments still go, each empty segment counting as one.
    assert_eq!(
        upstream_saw(run.addr, &kept, "/a//../b//./c").await,
        "/a/b//c"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoded_slashes_follow_escaped_slashes() {
    // Kept by default: to many APIs `%2F` is data (`/projects/group%2Fname`).
    let up = Upstream::start("app", Behavior::echo()).await;
    let (_site, run) = site(&[("guard", GUARD)], &[], "", &[("", &up)]);
    assert_eq!(
        upstream_saw(run.addr, &up, "/projects/a%2Fb").await,
        "/projects/a%2Fb"
    );

    // `reject`: 400 with an id, nothing forwarded.
    let up = Upstream::start("app", Behavior::echo()).await;
    let (_site, run) = site(
        &[("guard", GUARD)],
        &[],
        "escaped_slashes = \"reject\"",
        &[("", &up)],
    );
    for target in ["/%2Fadmin/x", "/x%5c..%5cadmin", "/a%2fb"] {
        let (status, id, body) = get_raw(run.addr, target).await;
        assert_eq!(status, 400, "{target}: {body}");
        assert!(id.is_some(), "{target}");
    }
    assert_eq!(up.requests(), 0, "{:?}", up.all());
    assert_eq!(upstream_saw(run.addr, &up, "/a%20b").await, "/a%20b");

    // `decode`: the guard sees the separator an upstream that decodes `%2F` sees.
    let up = Upstream::start("app", Behavior::echo()).await;
    let (_site, run) = site(
        &[("guard", GUARD)],
        &[],
        "escaped_slashes = \"decode\"",
        &[("", &up)],
    );
    for target in ["/%2Fadmin/x", "/n/..%2Fadmin"] {
        let (status, _, body) = get_raw(run.addr, target).await;
        assert_eq!(status, 403, "{target}: {body}");
    }
    let h2 = get_h2(run.addr, "/%2Fadmin/x").await;
    assert_eq!(h2.status, 403);
    assert_eq!(up.requests(), 0, "{:?}", up.all());
    assert_eq!(upstream_saw(run.addr, &up, "/pub%2Fx").await, "/pub/x");
}

// ---- policies that decide on the path -----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pcmod_guard_on_admin_cannot_be_walked_around() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let (_site, run) = site(&[("guard", GUARD)], &[], "", &[("", &up)]);
    for target in AROUND_THE_GUARD {
        let (status, _, body) = get_raw(run.addr, target).await;
        assert!(status == 403 || status == 400, "{target}: {status} {body}");
    }
    assert_eq!(up.requests(), 0, "{:?}", up.all());
    assert_eq!(
        upstream_saw(run.addr, &up, "/n/../public/x").await,
        "/public/x"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_the_same_path_is_seen_by_the_guard_and_the_upstream() {
    let up = Upstream::start("app", Behavior::echo()).await;
    let (_site, run) = site(&[("guard", GUARD)], &[], "", &[("", &up)]);
    for target in AROUND_THE_GUARD {
        let resp = get_h2(run.addr, target).await;
        assert_eq!(resp.version, http::Version::HTTP_2);
        assert!(
            resp.status == 403 || resp.status == 400,
            "{target}: {} {}",
            resp.status,
            resp.text()
        );
    }
    assert_eq!(up.requests(), 0, "{:?}", up.all());
    let resp = get_h2(run.addr, "/../x").await;
    assert_eq!(resp.status, 400);
    assert!(resp.request_id().is_some());

    let resp = get_h2(run.addr, "/n/%2e%2e//public/./x?q=/../").await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        up.last().map(|r| r.uri).unwrap_or_default(),
        "/public/x?q=/../"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_prefix_sees_the_normalised_path() {
    let api = Upstream::start("api", Behavior::echo()).await;
    // Only `/api/` is routed: anything else is 404, whatever it resolves to later.
    let (_site, run) = site(&[], &[], "", &[("/api/", &api)]);
    for target in [
        "/api/../internal/x",
        "/api/%2e%2e/internal/x",
        "/api//../internal",
    ] {
        let (status, _, body) = get_raw(run.addr, target).await;
        assert_eq!(status, 404, "{target}: {body}");
    }
    assert_eq!(api.requests(), 0, "{:?}", api.all());
    assert_eq!(upstream_saw(run.addr, &api, "/%61pi/v1").await, "/api/v1");
    assert_eq!(upstream_saw(run.addr, &api, "//api//v1").await, "/api/v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_rewrite_cannot_escape_its_prefix() {
    let rewrite = r##"mod rewrite {
  priority 10
  on request {
    if std.url_rewrite(pattern: """^/pub/(.*)$""", replacement: """/api/public/$1""") {
      next
    }
    if $path starts_with "/dyn/" {
      std.url_rewrite(pattern: """^/dyn/.*$""", replacement: $req.header["x-to"])
    }
  }
}
"##;
    // Runs after the rewrite: it sees the rewritten path, as the upstream does.
    let guard = GUARD.replace("mod guard {", "mod guard {\n  priority 20");
    let up = Upstream::start("app", Behavior::echo()).await;
    let (_site, run) = site(
        &[("rewrite", rewrite), ("guard", &guard)],
        &[],
        "",
        &[("", &up)],
    );
    for target in ["/pub/../../admin/x", "/pub/%2e%2e/%2e%2e/admin/x"] {
        let (status, _, body) = get_raw(run.addr, target).await;
        assert_eq!(status, 400, "{target}: {body}");
    }
    // Resolved before the rewrite: no longer under /pub/, so not rewritten, and the
    // guard sees what the upstream would have got.
    let (status, _, _) = get_raw(run.addr, "/pub/../admin/x").await;
    assert_eq!(status, 403);
    assert_eq!(
        upstream_saw(run.addr, &up, "/pub/a/./b?q=1").await,
        "/api/public/a/b?q=1"
    );

    // A replacement with dot-segments of its own is resolved before the next module
    // and the upstream see it; one that climbs above the root is the module's fault.
    let dyn_to = |to: &'static str| {
        let addr = run.addr;
        async move {
            let req = req("GET", "/dyn/x?k=v").header("x-to", to);
            send(addr, empty(req)).await
        }
    };
    assert_eq!(dyn_to("/api/public/../../admin").await.status, 403);
    assert_eq!(dyn_to("/api/public/../../../admin").await.status, 500);
    assert_eq!(dyn_to("/api/public/../v2//x").await.status, 200);
    assert_eq!(
        up.last().map(|r| r.uri).unwrap_or_default(),
        "/api/v2/x?k=v"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_set_by_pcmod_and_lua_are_normalised() {
    let setter = r#"mod setter {
  priority 10
  on request {
    if $path == "/pcmod" {
      set req.path = $req.header["x-p"]
    }
  }
}
"#;
    let lua_mod = "mod lua_setter {\n  priority 15\n  lua \"lua_setter.lua\"\n}\n";
    let lua = r#"
function on_request(req, ctx)
  if req.path == "/lua" then
    req:set_path(req:header("x-p"))
  end
end
"#;
    let guard = GUARD.replace("mod guard {", "mod guard {\n  priority 20");
    let up = Upstream::start("app", Behavior::echo()).await;
    let (_site, run) = site(
        &[
            ("setter", setter),
            ("lua_setter", lua_mod),
            ("guard", &guard),
        ],
        &[("lua_setter.lua", lua)],
        "",
        &[("", &up)],
    );
    for from in ["/pcmod", "/lua"] {
        let set_to = |to: &'static str| {
            let addr = run.addr;
            async move {
                let req = req("GET", &format!("{from}?k=/../")).header("x-p", to);
                send(addr, empty(req)).await
            }
        };
        let resp = set_to("/x/./y/../z//w").await;
        assert_eq!(resp.status, 200, "{from}: {}", resp.text());
        assert_eq!(
            up.last().map(|r| r.uri).unwrap_or_default(),
            "/x/z/w?k=/../",
            "{from}"
        );
        assert_eq!(set_to("/pub/../%61dmin").await.status, 403, "{from}");
        assert_eq!(set_to("/pub/../../admin").await.status, 500, "{from}");
        assert_eq!(set_to("../admin").await.status, 500, "{from}");
        // A query in a path would be taken for segments (`/a?x=/../b` -> `/b`): a
        // fault in both languages, which have their own setter for the query.
        let requests = up.requests();
        assert_eq!(set_to("/a?x=/../b").await.status, 500, "{from}");
        assert_eq!(set_to("/a#/../b").await.status, 500, "{from}");
        assert_eq!(up.requests(), requests, "{from}");
    }
}
