//! `#[testkit::test]`: writes a test's registration beside the test, so that a test
//! binary with its own `main` (`harness = false`) lists each test once, where it is defined.
//! Used through `leasepool-testkit`, which re-exports it; the code it writes names that crate
//! `testkit`, the name every test package gives the dependency
//! (`testkit = { package = "leasepool-testkit", ... }`).

use proc_macro::{Delimiter, TokenStream, TokenTree};

/// Registers the `async fn` it is put on as a test of the binary (see `leasepool_testkit`).
///
/// `#[test]` on `async fn name()`: one test, `module::name`. `#[test(each = PATH)]` on
/// `async fn name(case: T)`: one test per `(label, case)` of `PATH` (a `&'static [(&str, T)]`,
/// `T: Copy + Send`), `module::name::label`.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    match expand(args, item.clone()) {
        Ok(registration) => {
            let mut out = item;
            out.extend(registration);
            out
        }
        Err(message) => format!("::core::compile_error!({message:?});")
            .parse()
            .expect("a compile_error! invocation"),
    }
}

fn expand(args: TokenStream, item: TokenStream) -> Result<TokenStream, String> {
    let name = fn_name(item)?;
    let each = each_path(args)?;
    let cases = match each {
        None => format!(
            "|| ::std::vec![(::std::string::String::new(), \
             ::std::boxed::Box::new(|| ::std::boxed::Box::pin({name}()) as ::testkit::LocalTest) \
             as ::testkit::MakeTest)]"
        ),
        Some(path) => format!(
            "|| ({path}).iter().map(|(label, case)| {{ let case = *case; \
             (::std::format!(\"::{{label}}\"), \
             ::std::boxed::Box::new(move || ::std::boxed::Box::pin({name}(case)) as ::testkit::LocalTest) \
             as ::testkit::MakeTest) }}).collect()"
        ),
    };
    format!(
        "#[::testkit::linkme::distributed_slice(::testkit::TESTS)] \
         #[linkme(crate = ::testkit::linkme)] \
         #[allow(non_upper_case_globals)] \
         static __LEASEPOOL_TEST_{name}: ::testkit::Registered = \
         ::testkit::Registered {{ \
             module: ::core::module_path!(), name: {name:?}, cases: {cases} }};"
    )
    .parse()
    .map_err(|e| format!("testkit::test could not expand `{name}`: {e:?}"))
}

/// The name of the function the attribute is on.
fn fn_name(item: TokenStream) -> Result<String, String> {
    let mut tokens = item.into_iter();
    let mut is_async = false;
    while let Some(token) = tokens.next() {
        if let TokenTree::Ident(ident) = &token {
            match ident.to_string().as_str() {
                "async" => is_async = true,
                "fn" => {
                    return match tokens.next() {
                        Some(TokenTree::Ident(name)) if is_async => Ok(name.to_string()),
                        Some(TokenTree::Ident(name)) => Err(format!(
                            "testkit::test goes on an `async fn`; `{name}` is not async"
                        )),
                        _ => Err("testkit::test: no name after `fn`".to_owned()),
                    };
                }
                _ => {}
            }
        }
    }
    Err("testkit::test goes on an `async fn`".to_owned())
}

/// `each = PATH` as the text of `PATH`, or `None` without arguments.
fn each_path(args: TokenStream) -> Result<Option<String>, String> {
    let mut tokens = args.into_iter().peekable();
    let Some(first) = tokens.next() else {
        return Ok(None);
    };
    let eq = tokens.next();
    let is_each = matches!(&first, TokenTree::Ident(i) if i.to_string() == "each");
    let is_eq = matches!(&eq, Some(TokenTree::Punct(p)) if p.as_char() == '=');
    if !is_each || !is_eq || tokens.peek().is_none() {
        return Err("testkit::test takes no argument or `each = PATH`".to_owned());
    }
    let path: TokenStream = tokens
        .map(|t| match t {
            TokenTree::Group(g) if g.delimiter() == Delimiter::None => g.stream(),
            t => t.into(),
        })
        .collect();
    Ok(Some(path.to_string()))
}
