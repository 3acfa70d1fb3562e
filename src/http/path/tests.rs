use std::borrow::Cow;

use http::Uri;

use super::{normalize, normalize_uri, EscapedSlashes, PathError, PathRules};

const MERGE: PathRules = PathRules {
    merge_slashes: true,
    escaped_slashes: EscapedSlashes::Keep,
};
const KEEP: PathRules = PathRules {
    merge_slashes: false,
    escaped_slashes: EscapedSlashes::Keep,
};

const REJECT: PathRules = PathRules {
    merge_slashes: true,
    escaped_slashes: EscapedSlashes::Reject,
};
const DECODE: PathRules = PathRules {
    merge_slashes: true,
    escaped_slashes: EscapedSlashes::Decode,
};

#[test]
fn encoded_slashes_are_kept_refused_or_decoded_as_the_rules_say() {
    let with = |path: &str, rules| normalize(path, rules).map(Cow::into_owned);
    for path in ["/a%2Fb", "/a%2fb", "/a%5Cb", "/a%5cb", "/%2Fadmin"] {
        assert_eq!(with(path, MERGE), Ok(path.to_owned()), "{path}");
        assert_eq!(with(path, REJECT), Err(PathError::EscapedSlash), "{path}");
    }
    // Other escapes are no encoded slashes.
    assert_eq!(with("/a%20b%3F", REJECT), Ok("/a%20b%3F".to_owned()));
    assert_eq!(with("/%2Fadmin", DECODE), Ok("/admin".to_owned()));
    assert_eq!(with("/a%2fb", DECODE), Ok("/a/b".to_owned()));
    assert_eq!(with("/a%5Cb", DECODE), Ok("/a/b".to_owned()));
    // A decoded backslash is a separator for the rules after it too.
    assert_eq!(with("/%5cadmin", DECODE), Ok("/admin".to_owned()));
    assert_eq!(with("/x/..%5Cadmin", DECODE), Ok("/admin".to_owned()));
    assert_eq!(
        with("/x/..%5C..%5Cadmin", DECODE),
        Err(PathError::AboveRoot)
    );
    // And a bare one.
    assert_eq!(with("/\\admin", DECODE), Ok("/admin".to_owned()));
    assert_eq!(with("/x/..\\admin", DECODE), Ok("/admin".to_owned()));
    assert_eq!(with("/a\\b", MERGE), Ok("/a\\b".to_owned()));
    // Decoded first, so dot-segments they make are resolved, and climbing is refused.
    assert_eq!(with("/x/..%2Fadmin", DECODE), Ok("/admin".to_owned()));
    assert_eq!(with("/..%2Fadmin", DECODE), Err(PathError::AboveRoot));
    // Decoded once: `%252F` is an escaped `%`, then `2F`.
    assert_eq!(with("/a%252Fb", DECODE), Ok("/a%252Fb".to_owned()));
    assert_eq!(with("/a%252Fb", REJECT), Ok("/a%252Fb".to_owned()));
}

fn norm(path: &str) -> Result<String, PathError> {
    normalize(path, MERGE).map(Cow::into_owned)
}

#[test]
fn a_normal_path_comes_back_borrowed() {
    for path in [
        "/",
        "/a",
        "/a/b/",
        "/api/v1/users/42",
        "/.well-known/acme-challenge/x",
        "/a/..b/.c/b..",
        "/a%20b/c%2Fd/%25",
        "/files/%2F/x",
        "/a.b/c.d",
        "*",
        "",
    ] {
        assert!(
            matches!(normalize(path, MERGE), Ok(Cow::Borrowed(p)) if p == path),
            "{path}"
        );
    }
    assert!(matches!(
        normalize("/a//b", KEEP),
        Ok(Cow::Borrowed("/a//b"))
    ));
}

#[test]
fn escapes_of_unreserved_characters_are_decoded_and_others_kept() {
    assert_eq!(norm("/%61dmin"), Ok("/admin".into()));
    assert_eq!(norm("/%41%7a%30%2D%5f%7E"), Ok("/Az0-_~".into()));
    assert_eq!(norm("/a%2fb/%20/%25/x"), Ok("/a%2fb/%20/%25/x".into()));
    assert_eq!(norm("/caf%C3%A9/%61"), Ok("/caf%C3%A9/a".into()));
    // Escapes of escapes stay escaped: decoding is done once.
    assert_eq!(norm("/%252e%252e/x"), Ok("/%252e%252e/x".into()));
}

/// A `%` without two hex digits after it: decoding what follows would make a new
/// escape (`%%36%31` -> `%61`) that the upstream decodes once more, around a guard
/// on `/admin`. Refused, as nginx does.
#[test]
fn a_percent_without_two_hex_digits_is_refused() {
    for path in [
        "/%%36%31dmin",
        "/x/%%32%65%%32%65/admin",
        "/adm%%36%39n",
        "/%zz",
        "/a/%4",
        "/a%",
        "/%2%32",
    ] {
        assert_eq!(norm(path), Err(PathError::BadEscape), "{path}");
        assert_eq!(
            normalize(path, KEEP).map(Cow::into_owned),
            Err(PathError::BadEscape),
            "{path}"
        );
    }
}

#[test]
fn dot_segments_are_removed() {
    assert_eq!(norm("/a/./b/../c"), Ok("/a/c".into()));
    assert_eq!(norm("/n/../admin/x"), Ok("/admin/x".into()));
    assert_eq!(norm("/n/%2e%2e/admin/x"), Ok("/admin/x".into()));
    assert_eq!(norm("/n/.%2E/admin"), Ok("/admin".into()));
    assert_eq!(norm("/a/b/.."), Ok("/a/".into()));
    assert_eq!(norm("/a/b/."), Ok("/a/b/".into()));
    assert_eq!(norm("/a/.."), Ok("/".into()));
    assert_eq!(norm("/."), Ok("/".into()));
    assert_eq!(norm("/./a"), Ok("/a".into()));
}

#[test]
fn a_path_above_the_root_is_refused() {
    for path in ["/..", "/../x", "/a/../../x", "/%2e%2e/x", "/a/./../.."] {
        assert_eq!(norm(path), Err(PathError::AboveRoot), "{path}");
    }
}

#[test]
fn dots_beside_an_encoded_slash_are_refused() {
    for path in [
        "/n/..%2Fadmin/x",
        "/n/..%2fadmin",
        "/n/%2e%2e%2fadmin",
        "/n%2F..%2Fadmin",
        "/n/x%2F..",
        "/n/.%2Fx",
    ] {
        assert_eq!(norm(path), Err(PathError::DotBesideEncodedSlash), "{path}");
    }
    // Dots elsewhere in a segment with an encoded slash are just characters.
    assert!(matches!(
        normalize("/a.%2Fb/x%2F.y", MERGE),
        Ok(Cow::Borrowed("/a.%2Fb/x%2F.y"))
    ));
}

#[test]
fn slashes_merge_unless_the_rules_say_not() {
    assert_eq!(norm("//admin///x"), Ok("/admin/x".into()));
    assert_eq!(norm("/a//"), Ok("/a/".into()));
    assert_eq!(norm("//"), Ok("/".into()));
    // Merged before `..` applies, as nginx does.
    assert_eq!(norm("/a//../b"), Ok("/b".into()));
    let keep = |p| normalize(p, KEEP).map(Cow::into_owned);
    assert_eq!(keep("//admin///x"), Ok("//admin///x".into()));
    assert_eq!(keep("/a//../b"), Ok("/a/b".into()));
    assert_eq!(keep("/a//./b"), Ok("/a//b".into()));
}

/// `target` parsed, normalised in place, and written back.
fn normalized(target: &str) -> String {
    let mut uri: Uri = target.parse().expect("a valid target");
    normalize_uri(&mut uri, MERGE).expect("a normal form");
    uri.to_string()
}

#[test]
fn the_query_is_kept_byte_for_byte() {
    assert_eq!(
        normalized("/a/../b?x=/../&y=%2e%2e//"),
        "/b?x=/../&y=%2e%2e//"
    );
    assert_eq!(normalized("/a/./b?"), "/a/b?");
    assert_eq!(normalized("/a?x=/../"), "/a?x=/../");
}

#[test]
fn absolute_form_normalises_its_path_and_other_targets_are_left_alone() {
    assert_eq!(
        normalized("http://host:8080/a/../b?q"),
        "http://host:8080/b?q"
    );
    for target in ["*", "example.com:443"] {
        assert_eq!(normalized(target), target);
    }
}
