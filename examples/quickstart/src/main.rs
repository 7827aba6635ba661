//! The README's library quickstart: index a folder, then ask a question with
//! the answer streamed and its citations printed, using only the `magpie`
//! crate (embedded stores, the default models from `./models`).
//!
//! cargo run -p magpie-quickstart -- examples/docqa/sample "what does error E42 mean?"

#[tokio::main]
async fn main() -> magpie::Result<()> {
    let mut args = std::env::args().skip(1);
    let folder = args.next().unwrap_or("examples/docqa/sample".into());
    let question = args.next().unwrap_or("what does error E42 mean?".into());
    let index = magpie::Index::open("target/quickstart-index")?;
    index.add(&folder).await?;
    let llm = magpie::Models::from_env().load_generator()?;
    let print = |text: &str| print!("{text}");
    let answer = index.ask_stream(&question, &*llm, print).await?;
    for s in &answer.citations {
        println!("\n[{}] {}{}", s.number, s.source, s.span.cite_suffix());
    }
    Ok(())
}
