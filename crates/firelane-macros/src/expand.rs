//! From an `async fn` to a job: a unit struct named like the function, a struct of the stored
//! arguments, `args(..)` to build a request, and the `Job` impl that runs the body.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Attribute, Block, FnArg, Ident, Item, ItemFn, LitStr, Pat, PatIdent, PatType, ReturnType,
    Signature, Type, Visibility,
};

use crate::options::JobOptions;

/// Types injected from the job's context rather than stored, by the last segment of their path.
const INJECTED: [&str; 3] = ["State", "JobContext", "Cancellation"];

/// The whole expansion of `#[job(attr)] item`; errors become `compile_error!`s with spans.
pub(crate) fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    // Bad options still let the function expand (with no options), so that the only error a
    // user sees is the one about the option, not a cascade at every use of the job.
    let options = syn::parse2::<JobOptions>(attr).unwrap_or_else(|e| {
        errors.push(e);
        JobOptions::default()
    });
    let function = match syn::parse2::<Item>(item.clone()) {
        Ok(Item::Fn(function)) => function,
        Ok(other) => {
            errors.push(syn::Error::new(
                item_span(&other),
                "#[firelane::job] goes on an `async fn`",
            ));
            return errors.with(item);
        }
        Err(e) => {
            errors.push(e);
            return errors.with(item);
        }
    };
    match JobFn::analyze(&function) {
        Ok(job) => errors.with(job.expand(&options)),
        Err(e) => {
            errors.push(e);
            // Keep the function as written so that its body is still checked.
            errors.with(function.into_token_stream())
        }
    }
}

/// Errors gathered so that a user sees all of them at once.
#[derive(Default)]
struct Errors(Option<syn::Error>);

impl Errors {
    fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    fn into_result(self) -> syn::Result<()> {
        self.0.map_or(Ok(()), Err)
    }

    fn with(self, tokens: TokenStream) -> TokenStream {
        let mut out = self.0.map(|e| e.to_compile_error()).unwrap_or_default();
        out.extend(tokens);
        out
    }
}

fn item_span(item: &Item) -> Span {
    match item {
        Item::Struct(s) => s.struct_token.span,
        Item::Enum(e) => e.enum_token.span,
        Item::Impl(i) => i.impl_token.span,
        Item::Mod(m) => m.mod_token.span,
        other => other.span(),
    }
}

/// A job function, checked and taken apart.
struct JobFn {
    vis: Visibility,
    ident: Ident,
    /// `#[cfg]`: on every generated item.
    cfg_attrs: Vec<Attribute>,
    /// Docs and `#[deprecated]`: on the unit struct, which is what users name.
    struct_attrs: Vec<Attribute>,
    /// Everything else (lints, instrumentation): on the function that holds the body.
    body_attrs: Vec<Attribute>,
    params: Vec<Param>,
    /// The parameters as written, less the attributes the macro consumed.
    body_inputs: Vec<FnArg>,
    output: ReturnType,
    block: Box<Block>,
}

enum Param {
    /// Stored with the job as a field of the arguments struct.
    Stored {
        field: Ident,
        ty: Box<Type>,
        serde_attrs: Vec<Attribute>,
    },
    /// Taken from the context when the job runs (`FromContext`).
    Injected { ty: Box<Type> },
}

impl JobFn {
    fn analyze(function: &ItemFn) -> syn::Result<Self> {
        let mut errors = Errors::default();
        let sig = &function.sig;
        check_signature(sig, &mut errors);

        let mut params = Vec::new();
        let mut body_inputs = Vec::new();
        for input in &sig.inputs {
            match input {
                FnArg::Receiver(receiver) => errors.push(syn::Error::new(
                    receiver.self_token.span,
                    "a job is a free `async fn`, not a method: `self` cannot be stored with the job; \
                     pass what the job needs as arguments or take it as `State<T>`",
                )),
                FnArg::Typed(typed) => match Param::analyze(typed) {
                    Ok((param, body_input)) => {
                        params.push(param);
                        body_inputs.push(FnArg::Typed(body_input));
                    }
                    Err(e) => errors.push(e),
                },
            }
        }
        errors.into_result()?;

        let mut cfg_attrs = Vec::new();
        let mut struct_attrs = Vec::new();
        let mut body_attrs = Vec::new();
        for attr in &function.attrs {
            let path = attr.path();
            if path.is_ident("cfg") {
                cfg_attrs.push(attr.clone());
            } else if path.is_ident("doc") || path.is_ident("deprecated") {
                struct_attrs.push(attr.clone());
            } else {
                body_attrs.push(attr.clone());
            }
        }

        Ok(JobFn {
            vis: function.vis.clone(),
            ident: sig.ident.clone(),
            cfg_attrs,
            struct_attrs,
            body_attrs,
            params,
            body_inputs,
            output: sig.output.clone(),
            block: function.block.clone(),
        })
    }

    fn expand(&self, options: &JobOptions) -> TokenStream {
        let JobFn {
            vis,
            ident,
            cfg_attrs,
            struct_attrs,
            body_attrs,
            params,
            body_inputs,
            output,
            block,
        } = self;
        let args_ident = format_ident!("__{}_Args", ident.unraw(), span = ident.span());
        let body_ident = Ident::new("__firelane_job_body", Span::mixed_site());
        // At the function's name, so that "this function takes 2 arguments" points there.
        let args_fn = Ident::new("args", ident.span());
        let name = options
            .name
            .clone()
            .unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span()));

        let mut fields = Vec::new();
        let mut field_decls = Vec::new();
        let mut arg_decls = Vec::new();
        let mut injected_types = Vec::new();
        let mut locals = Vec::new();
        let mut take_stored = Vec::new();
        let mut take_injected = Vec::new();
        for (i, param) in params.iter().enumerate() {
            let local = format_ident!("__firelane_arg{}", i, span = Span::mixed_site());
            match param {
                Param::Stored {
                    field,
                    ty,
                    serde_attrs,
                } => {
                    let checks = argument_checks(ty, serde_attrs);
                    field_decls.push(quote!(#checks #(#serde_attrs)* #vis #field: #ty));
                    arg_decls.push(quote!(#field: #ty));
                    take_stored.push(quote!(#field: #local));
                    fields.push(field);
                }
                Param::Injected { ty } => {
                    take_injected.push(quote_spanned! {ty.span()=>
                        let #local = <#ty as ::firelane::FromContext>::from_context(&__context)?;
                    });
                    injected_types.push(ty);
                }
            }
            locals.push(local);
        }

        let options_fn = options.is_set().then(|| {
            let options = options.to_tokens();
            quote! {
                fn options() -> ::firelane::JobOptions {
                    #options
                }
            }
        });
        let required_state_fn = (!injected_types.is_empty()).then(|| {
            quote! {
                fn required_state() -> ::std::vec::Vec<::firelane::StateType> {
                    [#(<#injected_types as ::firelane::FromContext>::required_state()),*].concat()
                }
            }
        });
        let result_span = match output {
            ReturnType::Default => ident.span(),
            ReturnType::Type(_, ty) => ty.span(),
        };
        // The result gets the return type's span, so that a result or error type that is not
        // allowed is reported there.
        let result = Ident::new("__firelane_result", result_span);
        let call_body = quote_spanned! {result_span=>
            let #result = Self::#body_ident(#(#locals),*).await;
            ::firelane::IntoJobResult::into_job_result(#result)
        };
        let args_doc = format!(
            "A request to run `{}` with these arguments, to hand to a `firelane::Client`.",
            ident.unraw()
        );

        quote! {
            #(#cfg_attrs)*
            #(#struct_attrs)*
            #[allow(non_camel_case_types)]
            #[derive(
                ::core::clone::Clone,
                ::core::marker::Copy,
                ::core::fmt::Debug,
                ::core::default::Default
            )]
            #vis struct #ident;

            #(#cfg_attrs)*
            #[doc(hidden)]
            #[allow(
                non_camel_case_types,
                missing_docs,
                missing_debug_implementations,
                unreachable_pub
            )]
            #[derive(
                ::firelane::__private::serde::Serialize,
                ::firelane::__private::serde::Deserialize
            )]
            #[serde(crate = "::firelane::__private::serde")]
            #vis struct #args_ident {
                #(#field_decls,)*
            }

            #(#cfg_attrs)*
            impl #ident {
                #[doc = #args_doc]
                #[allow(clippy::too_many_arguments, unreachable_pub)]
                #[must_use]
                #vis fn #args_fn(#(#arg_decls),*) -> ::firelane::JobRequest<Self> {
                    <Self as ::firelane::Job>::with_args(#args_ident { #(#fields),* })
                }

                #(#body_attrs)*
                async fn #body_ident(#(#body_inputs),*) #output #block
            }

            #(#cfg_attrs)*
            impl ::firelane::Job for #ident {
                const NAME: &'static str = #name;
                type Args = #args_ident;

                #options_fn

                #required_state_fn

                async fn run(
                    &self,
                    __context: ::firelane::JobContext,
                    __args: Self::Args,
                ) -> ::core::result::Result<(), ::firelane::JobError> {
                    let #args_ident { #(#take_stored,)* } = __args;
                    #(#take_injected)*
                    #call_body
                }
            }
        }
    }
}

/// `serialize_with`/`deserialize_with` through functions bounded by `JobArgument`, so that an
/// argument that cannot be stored fails with that trait's message (derive `Serialize`, or pass
/// an id) instead of serde's. Left out when the user chose their own (de)serializer.
fn argument_checks(ty: &Type, serde_attrs: &[Attribute]) -> TokenStream {
    let mentions = |word: &str| {
        serde_attrs.iter().any(|attr| {
            attr.meta
                .to_token_stream()
                .into_iter()
                .any(|tree| mentions_ident(tree, word))
        })
    };
    if mentions("with") || mentions("serialize_with") || mentions("deserialize_with") {
        return TokenStream::new();
    }
    // Both directions raise the one obligation `Type: StoredArgument` at the argument's type,
    // so a type that cannot be stored gets one error per missing trait, with that trait's
    // message rather than serde's.
    let span = ty.span();
    let argument = format!(
        "<{} as ::firelane::__private::StoredArgument>",
        ty.to_token_stream()
    );
    let serialize = LitStr::new(&format!("{argument}::serialize"), span);
    let deserialize = LitStr::new(&format!("{argument}::deserialize"), span);
    // With `deserialize_with`, serde no longer treats a missing `Option` field as `None`; say
    // it explicitly, as it would have.
    let default = (last_segment(ty).is_some_and(|s| s == "Option") && !mentions("default"))
        .then(|| quote!(#[serde(default)]));
    quote! {
        #[serde(serialize_with = #serialize, deserialize_with = #deserialize)]
        #default
    }
}

fn mentions_ident(tree: proc_macro2::TokenTree, word: &str) -> bool {
    match tree {
        proc_macro2::TokenTree::Ident(ident) => ident == word,
        proc_macro2::TokenTree::Group(group) => group
            .stream()
            .into_iter()
            .any(|tree| mentions_ident(tree, word)),
        _ => false,
    }
}

fn check_signature(sig: &Signature, errors: &mut Errors) {
    if let Some(constness) = &sig.constness {
        errors.push(syn::Error::new(
            constness.span,
            "#[firelane::job] needs an `async fn`, not a `const fn`",
        ));
    }
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            "#[firelane::job] needs an `async fn`: write `async fn` here",
        ));
    }
    if let Some(unsafety) = &sig.unsafety {
        errors.push(syn::Error::new(
            unsafety.span,
            "a job cannot be an `unsafe fn`: a server calls it, and cannot uphold its safety \
             contract; make the function safe and keep the `unsafe` block inside",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new(
            abi.span(),
            "a job cannot have an `extern` ABI: remove it",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new(
            sig.generics.span(),
            "a job cannot be generic: its stored arguments are decoded into one concrete type; \
             write one job per type, or take an enum",
        ));
    }
    if let Some(variadic) = &sig.variadic {
        errors.push(syn::Error::new(
            variadic.span(),
            "a job cannot be variadic: list its arguments",
        ));
    }
}

impl Param {
    /// Classifies a parameter, returning it with the attributes the macro consumed removed.
    fn analyze(typed: &PatType) -> syn::Result<(Param, PatType)> {
        let mut body_input = typed.clone();
        body_input.attrs.clear();
        let mut marked_inject = false;
        let mut serde_attrs = Vec::new();
        for attr in &typed.attrs {
            if attr.path().is_ident("inject") {
                attr.meta.require_path_only()?;
                marked_inject = true;
            } else if attr.path().is_ident("serde") {
                serde_attrs.push(attr.clone());
            } else {
                body_input.attrs.push(attr.clone());
            }
        }

        let ty = &typed.ty;
        check_owned(ty)?;
        let injected = marked_inject || last_segment(ty).is_some_and(|s| INJECTED.contains(&&*s));
        if injected {
            if let Some(attr) = serde_attrs.first() {
                return Err(syn::Error::new(
                    attr.span(),
                    "`#[serde(..)]` applies to stored arguments; this parameter is injected from \
                     the job's context",
                ));
            }
            return Ok((Param::Injected { ty: ty.clone() }, body_input));
        }

        let field = match &*typed.pat {
            Pat::Ident(PatIdent {
                by_ref: None,
                subpat: None,
                ident,
                ..
            }) => ident.clone(),
            other => {
                return Err(syn::Error::new(
                    other.span(),
                    "a job argument needs a plain name (`user_id: i64`): it is stored as a named \
                     field of the job's arguments; destructure it inside the function",
                ));
            }
        };
        Ok((
            Param::Stored {
                field,
                ty: ty.clone(),
                serde_attrs,
            },
            body_input,
        ))
    }
}

/// The last segment of a type's path: `State` for `firelane::State<Mailer>`.
fn last_segment(ty: &Type) -> Option<String> {
    match ty {
        Type::Path(path) if path.qself.is_none() => {
            path.path.segments.last().map(|s| s.ident.to_string())
        }
        Type::Group(group) => last_segment(&group.elem),
        Type::Paren(paren) => last_segment(&paren.elem),
        _ => None,
    }
}

/// Rejects parameter types that borrow or are anonymous generics.
fn check_owned(ty: &Type) -> syn::Result<()> {
    match ty {
        Type::Reference(reference) => {
            let message = match last_segment(&reference.elem) {
                Some(name) if INJECTED.contains(&name.as_str()) => {
                    format!("take `{name}` by value: it is cheap to clone")
                }
                _ => "a job argument cannot be a reference: it is stored, and decoded again when \
                      the job runs; take an owned type (`String` for `&str`, `Vec<T>` for `&[T]`)"
                    .to_owned(),
            };
            Err(syn::Error::new(reference.span(), message))
        }
        Type::ImplTrait(impl_trait) => Err(syn::Error::new(
            impl_trait.span(),
            "a job argument cannot be `impl Trait`: its stored value is decoded into one \
             concrete type; name that type",
        )),
        Type::Group(group) => check_owned(&group.elem),
        Type::Paren(paren) => check_owned(&paren.elem),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(attr: TokenStream, item: TokenStream) -> String {
        job(attr, item).to_string()
    }

    #[test]
    fn a_job_becomes_a_struct_an_args_struct_and_an_impl() {
        let out = expand(
            quote!(queue = "emails"),
            quote! {
                /// Says hello.
                pub async fn send_welcome_email(
                    user_id: i64,
                    mut name: String,
                    State(mailer): State<Mailer>,
                    ctx: JobContext,
                ) -> Result<(), JobError> {
                    Ok(())
                }
            },
        );
        for part in [
            "pub struct send_welcome_email ;",
            "pub struct __send_welcome_email_Args { # [serde",
            "pub user_id : i64",
            "pub name : String",
            "pub fn args (user_id : i64 , name : String) -> :: firelane :: JobRequest < Self >",
            "const NAME : & 'static str = \"send_welcome_email\"",
            ". queue (\"emails\")",
            "< State < Mailer > as :: firelane :: FromContext > :: required_state ()",
            "< JobContext as :: firelane :: FromContext > :: from_context (& __context) ?",
            "async fn __firelane_job_body (user_id : i64 , mut name : String , State (mailer) : State < Mailer > , ctx : JobContext)",
            "# [doc = r\" Says hello.\"]",
        ] {
            assert!(out.contains(part), "`{part}` not in {out}");
        }
        assert!(!out.contains("compile_error"), "{out}");
    }

    #[test]
    fn a_job_without_options_or_state_keeps_the_defaults() {
        let out = expand(
            quote!(),
            quote!(
                async fn tick() {}
            ),
        );
        assert!(!out.contains("fn options"), "{out}");
        assert!(!out.contains("fn required_state"), "{out}");
        assert!(out.contains("struct __tick_Args { }"), "{out}");
    }

    #[test]
    fn optional_arguments_default_to_none_when_missing() {
        let out = expand(
            quote!(),
            quote!(
                async fn f(note: Option<String>) {}
            ),
        );
        assert!(out.contains("# [serde (default)]"), "{out}");
    }

    #[test]
    fn own_serde_attributes_are_kept() {
        let out = expand(
            quote!(),
            quote!(
                async fn f(#[serde(with = "my_codec")] at: Stamp) {}
            ),
        );
        assert!(!out.contains("StoredArgument"), "{out}");
        assert!(out.contains("with = \"my_codec\""), "{out}");
    }

    #[test]
    fn marked_parameters_are_injected() {
        let out = expand(
            quote!(),
            quote!(
                async fn f(#[inject] db: Db) {}
            ),
        );
        assert!(
            out.contains("< Db as :: firelane :: FromContext >"),
            "{out}"
        );
        assert!(out.contains("struct __f_Args { }"), "{out}");
    }

    fn error(attr: TokenStream, item: TokenStream) -> String {
        let out = expand(attr, item);
        assert!(out.contains("compile_error"), "no error in {out}");
        out
    }

    #[test]
    fn mistakes_in_the_function_are_reported() {
        assert!(
            error(
                quote!(),
                quote!(
                    fn f() {}
                )
            )
            .contains("needs an `async fn`")
        );
        assert!(
            error(
                quote!(),
                quote!(
                    async fn f<T>(t: T) {}
                )
            )
            .contains("cannot be generic")
        );
        assert!(
            error(
                quote!(),
                quote!(
                    async fn f(&self) {}
                )
            )
            .contains("not a method")
        );
        assert!(
            error(
                quote!(),
                quote!(
                    async fn f((a, b): (i32, i32)) {}
                )
            )
            .contains("plain name")
        );
        assert!(
            error(
                quote!(),
                quote!(
                    async fn f(_: i32) {}
                )
            )
            .contains("plain name")
        );
        assert!(
            error(
                quote!(),
                quote!(
                    async fn f(s: &str) {}
                )
            )
            .contains("owned type")
        );
        assert!(
            error(
                quote!(),
                quote!(
                    async fn f(c: &JobContext) {}
                )
            )
            .contains("by value")
        );
        assert!(
            error(
                quote!(),
                quote!(
                    async fn f(s: impl Into<String>) {}
                )
            )
            .contains("impl Trait")
        );
        assert!(
            error(
                quote!(),
                quote!(
                    async unsafe fn f() {}
                )
            )
            .contains("unsafe fn")
        );
        assert!(
            error(
                quote!(),
                quote!(
                    struct S;
                )
            )
            .contains("goes on an `async fn`")
        );
    }

    #[test]
    fn every_mistake_is_reported_at_once() {
        let out = error(
            quote!(),
            quote!(
                fn f<T>(&self, s: &str) {}
            ),
        );
        for part in ["async fn", "generic", "not a method", "owned type"] {
            assert!(out.contains(part), "`{part}` not in {out}");
        }
    }

    #[test]
    fn bad_options_still_expand_the_job() {
        let out = error(
            quote!(queues = "x"),
            quote!(
                async fn f(a: i32) {}
            ),
        );
        assert!(out.contains("unknown option"), "{out}");
        assert!(out.contains("impl :: firelane :: Job for f"), "{out}");
    }
}
