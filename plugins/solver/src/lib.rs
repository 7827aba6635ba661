//! The solver plugin: systems of linear equations and roots of polynomials.

use magpie_mathexpr::{format_number, linear, parse_equation, polynomial, variables, MAX_DEGREE};
use magpie_plugin_sdk::prelude::*;
use std::collections::BTreeMap;

/// Arguments of `solve_linear`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct LinearArgs {
    /// The equations, one per item, e.g. `["2x + 3y = 7", "x - y = 1"]`.
    equations: Vec<String>,
}

/// What `solve_linear` returns.
#[derive(Debug, Serialize)]
struct LinearSolution {
    /// Each variable's value, formatted.
    solution: BTreeMap<String, String>,
}

const MAX_EQUATIONS: usize = 50;

fn solve_linear(args: LinearArgs) -> ToolResult<LinearSolution> {
    if args.equations.is_empty() {
        return Err(ToolError::invalid("no equations given"));
    }
    if args.equations.len() > MAX_EQUATIONS {
        return Err(ToolError::invalid(format!(
            "{} equations; the limit is {MAX_EQUATIONS}",
            args.equations.len()
        )));
    }
    let mut rows = Vec::new();
    for (i, eq) in args.equations.iter().enumerate() {
        let expr = parse_equation(eq)
            .map_err(|e| ToolError::invalid(format!("equation {} (`{eq}`): {e}", i + 1)))?;
        let form = linear(&expr)
            .map_err(|e| ToolError::invalid(format!("equation {} (`{eq}`): {e}", i + 1)))?;
        rows.push(form);
    }
    let names: Vec<String> = {
        let mut n: Vec<String> = rows.iter().flat_map(|r| r.terms.keys().cloned()).collect();
        n.sort();
        n.dedup();
        n
    };
    if names.is_empty() {
        return Err(ToolError::invalid("the equations have no variables"));
    }
    let (m, n) = (rows.len(), names.len());
    // Augmented matrix [A | b] with A·x = b, b = -constant.
    let mut a: Vec<Vec<f64>> = rows
        .iter()
        .map(|r| {
            let mut row: Vec<f64> = names
                .iter()
                .map(|v| r.terms.get(v).copied().unwrap_or(0.0))
                .collect();
            row.push(-r.constant);
            row
        })
        .collect();
    let scale = a
        .iter()
        .flatten()
        .fold(0.0f64, |s, v| s.max(v.abs()))
        .max(1.0);
    let eps = 1e-10 * scale;
    let mut pivots = Vec::new();
    let mut row = 0;
    for col in 0..n {
        let Some(p) = (row..m).max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs())) else {
            break;
        };
        if a[p][col].abs() <= eps {
            continue;
        }
        a.swap(row, p);
        let d = a[row][col];
        for v in a[row].iter_mut() {
            *v /= d;
        }
        let pivot_row = a[row].clone();
        for (i, r) in a.iter_mut().enumerate() {
            if i != row && r[col] != 0.0 {
                let f = r[col];
                for (x, p) in r.iter_mut().zip(&pivot_row) {
                    *x -= f * p;
                }
            }
        }
        pivots.push(col);
        row += 1;
        if row == m {
            break;
        }
    }
    if a[row..].iter().any(|r| r[n].abs() > eps) {
        return Err(ToolError::failed(
            "the equations contradict each other: there is no solution",
        ));
    }
    if pivots.len() < n {
        let free: Vec<&str> = (0..n)
            .filter(|c| !pivots.contains(c))
            .map(|c| names[c].as_str())
            .collect();
        return Err(ToolError::failed(format!(
            "infinitely many solutions: {} can take any value; add equations to pin them down",
            free.join(", ")
        )));
    }
    let solution = pivots
        .iter()
        .enumerate()
        .map(|(r, &c)| (names[c].clone(), format_number(clean(a[r][n]))))
        .collect();
    Ok(LinearSolution { solution })
}

fn clean(v: f64) -> f64 {
    let r = v.round();
    if (v - r).abs() < 1e-9 * r.abs().max(1.0) {
        r
    } else {
        v
    }
}

/// Arguments of `roots`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct RootsArgs {
    /// The polynomial equation or expression in one variable, e.g. `x^2 - 5x + 6 = 0`.
    polynomial: String,
}

/// What `roots` returns.
#[derive(Debug, Serialize)]
struct Roots {
    /// The variable solved for.
    variable: String,
    /// Degree of the polynomial.
    degree: usize,
    /// Real roots, ascending, formatted (repeated roots listed once per multiplicity).
    real: Vec<String>,
    /// Complex roots as `a + bi`, formatted.
    complex: Vec<String>,
}

fn roots(args: RootsArgs) -> ToolResult<Roots> {
    let expr = parse_equation(&args.polynomial).map_err(|e| ToolError::invalid(e.to_string()))?;
    let vars = variables(&expr);
    let x = match vars.as_slice() {
        [one] => one.clone(),
        [] => return Err(ToolError::invalid("the polynomial has no variable")),
        many => {
            return Err(ToolError::invalid(format!(
                "roots needs one variable, found {}; use solve_linear for systems",
                many.join(", ")
            )))
        }
    };
    let coeffs = polynomial(&expr, &x).map_err(|e| ToolError::invalid(e.to_string()))?;
    let degree = coeffs.len() - 1;
    if degree == 0 {
        return Err(ToolError::failed(if coeffs[0] == 0.0 {
            "the equation holds for every value".to_string()
        } else {
            "the equation has no solution (it reduces to a nonzero constant = 0)".to_string()
        }));
    }
    let found = durand_kerner(&coeffs);
    let mut real = Vec::new();
    let mut complex = Vec::new();
    for (re, im) in found {
        if im.abs() < 1e-7 * re.abs().max(1.0) {
            real.push(clean(re));
        } else if im > 0.0 {
            complex.push((clean(re), clean(im)));
        }
    }
    real.sort_by(f64::total_cmp);
    complex.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut complex_text = Vec::new();
    for (re, im) in complex {
        complex_text.push(format!("{} + {}i", format_number(re), format_number(im)));
        complex_text.push(format!("{} - {}i", format_number(re), format_number(im)));
    }
    Ok(Roots {
        variable: x,
        degree,
        real: real.into_iter().map(format_number).collect(),
        complex: complex_text,
    })
}

/// All complex roots of Σ c[i]·x^i (Durand–Kerner, then Newton polishing).
fn durand_kerner(c: &[f64]) -> Vec<(f64, f64)> {
    let n = c.len() - 1;
    debug_assert!((1..=MAX_DEGREE).contains(&n));
    let lead = c[n];
    let monic: Vec<f64> = c.iter().map(|v| v / lead).collect();
    type C = (f64, f64);
    let mul = |a: C, b: C| (a.0 * b.0 - a.1 * b.1, a.0 * b.1 + a.1 * b.0);
    let sub = |a: C, b: C| (a.0 - b.0, a.1 - b.1);
    let div = |a: C, b: C| {
        let d = b.0 * b.0 + b.1 * b.1;
        ((a.0 * b.0 + a.1 * b.1) / d, (a.1 * b.0 - a.0 * b.1) / d)
    };
    let eval = |z: C| {
        let mut acc = (0.0, 0.0);
        for k in (0..=n).rev() {
            acc = mul(acc, z);
            acc.0 += monic[k];
        }
        acc
    };
    let deriv = |z: C| {
        let mut acc = (0.0, 0.0);
        for k in (1..=n).rev() {
            acc = mul(acc, z);
            acc.0 += monic[k] * k as f64;
        }
        acc
    };
    let radius = 1.0 + monic[..n].iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let mut z: Vec<C> = (0..n)
        .map(|k| {
            let angle = 0.4 + std::f64::consts::TAU * k as f64 / n as f64;
            (radius * 0.5 * angle.cos(), radius * 0.5 * angle.sin())
        })
        .collect();
    for _ in 0..500 {
        let mut moved = 0.0f64;
        for i in 0..n {
            let mut denom = (1.0, 0.0);
            for j in 0..n {
                if i != j {
                    denom = mul(denom, sub(z[i], z[j]));
                }
            }
            if denom == (0.0, 0.0) {
                denom = (1e-12, 0.0);
            }
            let step = div(eval(z[i]), denom);
            z[i] = sub(z[i], step);
            moved = moved.max(step.0.abs() + step.1.abs());
        }
        if moved < 1e-14 {
            break;
        }
    }
    for zi in z.iter_mut() {
        for _ in 0..3 {
            let d = deriv(*zi);
            if d == (0.0, 0.0) {
                break;
            }
            *zi = sub(*zi, div(eval(*zi), d));
        }
    }
    z
}

magpie_plugin_sdk::plugin! {
    name: "solver",
    version: env!("CARGO_PKG_VERSION"),
    summary: "Solves systems of linear equations and finds the roots of polynomials.",
    tools: [
        solve_linear: "Solve a system of linear equations in any variables, e.g. \
                       [\"2x + 3y = 7\", \"x - y = 1\"]. Says so when there is no solution \
                       or infinitely many.",
        roots: "All roots (real and complex) of a polynomial in one variable, up to degree 64, \
                e.g. `x^3 - 6x^2 + 11x - 6 = 0`.",
    ],
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_systems() {
        let s = solve_linear(LinearArgs {
            equations: vec!["2x + 3y = 7".into(), "x - y = 1".into()],
        })
        .unwrap();
        assert_eq!(s.solution["x"], "2");
        assert_eq!(s.solution["y"], "1");
        let e = solve_linear(LinearArgs {
            equations: vec!["x + y = 1".into(), "2x + 2y = 3".into()],
        })
        .unwrap_err();
        assert!(e.to_string().contains("no solution"), "{e}");
        let e = solve_linear(LinearArgs {
            equations: vec!["x + y = 1".into()],
        })
        .unwrap_err();
        assert!(e.to_string().contains("infinitely many"), "{e}");
        assert!(solve_linear(LinearArgs {
            equations: vec!["x*y = 2".into()]
        })
        .is_err());
    }

    #[test]
    fn polynomial_roots() {
        let r = roots(RootsArgs {
            polynomial: "x^3 - 6x^2 + 11x - 6 = 0".into(),
        })
        .unwrap();
        assert_eq!(r.real, vec!["1", "2", "3"]);
        let r = roots(RootsArgs {
            polynomial: "z^2 + 1".into(),
        })
        .unwrap();
        assert!(r.real.is_empty());
        assert_eq!(r.complex, vec!["0 + 1i", "0 - 1i"]);
        let r = roots(RootsArgs {
            polynomial: "(x-2)^2".into(),
        })
        .unwrap();
        assert_eq!(r.real, vec!["2", "2"]);
        assert!(roots(RootsArgs {
            polynomial: "5 = 0".into()
        })
        .is_err());
        assert!(roots(RootsArgs {
            polynomial: "x + y".into()
        })
        .is_err());
    }
}
