//! The calculator plugin: arithmetic with precedence, powers, factorials,
//! functions (sqrt, ln, log, sin, ...) and the constants pi, e and tau.

use magpie_mathexpr::{evaluate, format_number};
use magpie_plugin_sdk::prelude::*;

/// Arguments of `calculate`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct CalculateArgs {
    /// The expression, e.g. `2 + 3 * (4 - 1)^2`, `sqrt(2) / 2`, `5!`, `log(8, 2)`.
    expression: String,
}

/// What `calculate` returns.
#[derive(Serialize)]
struct Calculation {
    /// The expression as given.
    expression: String,
    /// The value, formatted (integers without a decimal point, 12 significant digits).
    result: String,
    /// The value as a number.
    value: f64,
}

fn calculate(args: CalculateArgs) -> ToolResult<Calculation> {
    let value = evaluate(&args.expression)
        .map_err(|e| ToolError::invalid(format!("cannot compute `{}`: {e}", args.expression)))?;
    Ok(Calculation {
        result: format_number(value),
        expression: args.expression,
        value,
    })
}

magpie_plugin_sdk::plugin! {
    name: "calculator",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Exact-to-12-digits arithmetic, so the model does not have to do sums in its head.",
    tools: [
        calculate: "Evaluate an arithmetic expression: + - * / % ^ (power) ! (factorial), parentheses, \
                    functions sqrt cbrt abs exp ln log log2 log10 sin cos tan asin acos atan atan2 \
                    sinh cosh tanh floor ceil round trunc min max hypot deg rad, constants pi e tau. \
                    Angles are in radians.",
    ],
}
