//! Arithmetic expressions for the calculator and solver plugins: a parser to a
//! small syntax tree, numeric evaluation with functions, and reduction to
//! linear forms and one-variable polynomials. Pure Rust, no dependencies, so the
//! same code runs natively (tests, benchmarks) and inside the plugins.

use std::collections::BTreeMap;
use std::fmt;

/// Why an expression could not be read or computed; `at` is a character offset.
#[derive(Debug, Clone, PartialEq)]
pub struct MathError {
    pub message: String,
    pub at: Option<usize>,
}

impl MathError {
    fn at(message: impl Into<String>, at: usize) -> Self {
        Self {
            message: message.into(),
            at: Some(at),
        }
    }
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            at: None,
        }
    }
}

impl fmt::Display for MathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some(at) => write!(f, "{} (at character {})", self.message, at + 1),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for MathError {}

/// A parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(f64),
    Var(String),
    Neg(Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Rem(Box<Expr>, Box<Expr>),
    Pow(Box<Expr>, Box<Expr>),
    Fact(Box<Expr>),
    Call(String, Vec<Expr>),
}

/// Longest input accepted, in bytes.
pub const MAX_INPUT: usize = 10_000;
const MAX_DEPTH: usize = 200;

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(f64),
    Ident(String),
    Op(char),
}

fn lex(input: &str) -> Result<Vec<(Tok, usize)>, MathError> {
    if input.len() > MAX_INPUT {
        return Err(MathError::new(format!(
            "expression is {} bytes; the limit is {MAX_INPUT}",
            input.len()
        )));
    }
    let chars: Vec<char> = input.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_digit()
            || (c == '.' && chars.get(i + 1).is_some_and(|d| d.is_ascii_digit()))
        {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
            // Exponent: 1e5, 2.5E-3 (but not `2e` followed by a letter, which is 2·e).
            if i < chars.len() && (chars[i] == 'e' || chars[i] == 'E') {
                let mut j = i + 1;
                if j < chars.len() && (chars[j] == '+' || chars[j] == '-') {
                    j += 1;
                }
                if j < chars.len() && chars[j].is_ascii_digit() {
                    while j < chars.len() && chars[j].is_ascii_digit() {
                        j += 1;
                    }
                    i = j;
                }
            }
            let text: String = chars[start..i].iter().filter(|c| **c != '_').collect();
            let value: f64 = text
                .parse()
                .map_err(|_| MathError::at(format!("`{text}` is not a number"), start))?;
            out.push((Tok::Num(value), start));
        } else if c.is_alphabetic() || c == '_' || c == 'π' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let name: String = chars[start..i].iter().collect();
            out.push((Tok::Ident(name), start));
        } else if "+-*/^%(),!=".contains(c) || c == '×' || c == '÷' || c == '−' {
            let op = match c {
                '×' => '*',
                '÷' => '/',
                '−' => '-',
                _ => c,
            };
            // `**` is a power, as in Python.
            if op == '*' && chars.get(i + 1) == Some(&'*') {
                out.push((Tok::Op('^'), i));
                i += 2;
            } else {
                out.push((Tok::Op(op), i));
                i += 1;
            }
        } else {
            return Err(MathError::at(format!("unexpected character `{c}`"), i));
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    end: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(t, _)| t)
    }
    fn offset(&self) -> usize {
        self.toks.get(self.pos).map(|(_, o)| *o).unwrap_or(self.end)
    }
    fn eat(&mut self, op: char) -> bool {
        if self.peek() == Some(&Tok::Op(op)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn enter(&mut self) -> Result<(), MathError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(MathError::at(
                "expression is nested too deeply",
                self.offset(),
            ));
        }
        Ok(())
    }

    // sum := product (('+'|'-') product)*
    fn sum(&mut self) -> Result<Expr, MathError> {
        self.enter()?;
        let mut left = self.product()?;
        loop {
            if self.eat('+') {
                left = Expr::Add(Box::new(left), Box::new(self.product()?));
            } else if self.eat('-') {
                left = Expr::Sub(Box::new(left), Box::new(self.product()?));
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(left)
    }

    // product := unary (('*'|'/'|'%'|implicit) unary)*
    fn product(&mut self) -> Result<Expr, MathError> {
        let mut left = self.unary()?;
        loop {
            if self.eat('*') {
                left = Expr::Mul(Box::new(left), Box::new(self.unary()?));
            } else if self.eat('/') {
                left = Expr::Div(Box::new(left), Box::new(self.unary()?));
            } else if self.eat('%') {
                left = Expr::Rem(Box::new(left), Box::new(self.unary()?));
            } else if matches!(self.peek(), Some(Tok::Ident(_)) | Some(Tok::Op('('))) {
                // Implicit multiplication: 2x, 3(x+1), (x+1)(x-1).
                left = Expr::Mul(Box::new(left), Box::new(self.power()?));
            } else {
                break;
            }
        }
        Ok(left)
    }

    // unary := ('-'|'+') unary | power
    fn unary(&mut self) -> Result<Expr, MathError> {
        if self.eat('-') {
            self.enter()?;
            let e = Expr::Neg(Box::new(self.unary()?));
            self.depth -= 1;
            return Ok(e);
        }
        if self.eat('+') {
            return self.unary();
        }
        self.power()
    }

    // power := postfix ('^' unary)?   (right-associative; -2^2 = -4)
    fn power(&mut self) -> Result<Expr, MathError> {
        let base = self.postfix()?;
        if self.eat('^') {
            self.enter()?;
            let exp = self.unary()?;
            self.depth -= 1;
            return Ok(Expr::Pow(Box::new(base), Box::new(exp)));
        }
        Ok(base)
    }

    fn postfix(&mut self) -> Result<Expr, MathError> {
        let mut e = self.atom()?;
        while self.eat('!') {
            e = Expr::Fact(Box::new(e));
        }
        Ok(e)
    }

    fn atom(&mut self) -> Result<Expr, MathError> {
        let at = self.offset();
        match self.toks.get(self.pos).cloned() {
            Some((Tok::Num(v), _)) => {
                self.pos += 1;
                Ok(Expr::Num(v))
            }
            Some((Tok::Ident(name), _)) => {
                self.pos += 1;
                if self.eat('(') {
                    let mut args = Vec::new();
                    if !self.eat(')') {
                        loop {
                            args.push(self.sum()?);
                            if self.eat(')') {
                                break;
                            }
                            if !self.eat(',') {
                                return Err(MathError::at(
                                    format!("expected `,` or `)` in the arguments of {name}"),
                                    self.offset(),
                                ));
                            }
                        }
                    }
                    Ok(Expr::Call(name.to_lowercase(), args))
                } else {
                    Ok(Expr::Var(name))
                }
            }
            Some((Tok::Op('('), _)) => {
                self.pos += 1;
                let e = self.sum()?;
                if !self.eat(')') {
                    return Err(MathError::at("missing `)`", self.offset()));
                }
                Ok(e)
            }
            Some((Tok::Op(c), _)) => Err(MathError::at(format!("unexpected `{c}`"), at)),
            None => Err(MathError::at("expression ends too early", at)),
        }
    }
}

/// Parse an expression (no `=`).
pub fn parse(input: &str) -> Result<Expr, MathError> {
    let toks = lex(input)?;
    if toks.is_empty() {
        return Err(MathError::new("the expression is empty"));
    }
    let mut p = Parser {
        toks,
        pos: 0,
        end: input.chars().count(),
        depth: 0,
    };
    let e = p.sum()?;
    if p.pos < p.toks.len() {
        let at = p.offset();
        let what = match &p.toks[p.pos].0 {
            Tok::Op(')') => "unmatched `)`".to_string(),
            Tok::Op('=') => "`=` belongs in an equation; use the solver for equations".to_string(),
            Tok::Op(c) => format!("unexpected `{c}`"),
            Tok::Num(v) => format!("unexpected number {v}"),
            Tok::Ident(n) => format!("unexpected `{n}`"),
        };
        return Err(MathError::at(what, at));
    }
    Ok(e)
}

/// Parse `left = right` into `left - right` (an expression equal to zero); a
/// bare expression is taken as `= 0`.
pub fn parse_equation(input: &str) -> Result<Expr, MathError> {
    let parts: Vec<&str> = input.split('=').collect();
    match parts.as_slice() {
        [one] => parse(one),
        [left, right] => {
            let l = parse(left).map_err(|e| shift(e, 0))?;
            let r = parse(right).map_err(|e| shift(e, left.chars().count() + 1))?;
            Ok(Expr::Sub(Box::new(l), Box::new(r)))
        }
        _ => Err(MathError::new(format!(
            "`{input}` has {} `=` signs; an equation has one",
            parts.len() - 1
        ))),
    }
}

fn shift(mut e: MathError, by: usize) -> MathError {
    e.at = e.at.map(|a| a + by);
    e
}

fn constant(name: &str) -> Option<f64> {
    match name {
        "pi" | "PI" | "Pi" | "π" => Some(std::f64::consts::PI),
        "e" | "E" => Some(std::f64::consts::E),
        "tau" => Some(std::f64::consts::TAU),
        _ => None,
    }
}

fn check(name: &str, v: f64) -> Result<f64, MathError> {
    if v.is_nan() {
        Err(MathError::new(format!(
            "{name} is undefined here (not a number)"
        )))
    } else if v.is_infinite() {
        Err(MathError::new(format!(
            "{name} overflows (the result is too large)"
        )))
    } else {
        Ok(v)
    }
}

fn arity(name: &str, args: &[f64], n: usize) -> Result<(), MathError> {
    if args.len() == n {
        Ok(())
    } else {
        Err(MathError::new(format!(
            "{name} takes {n} argument{}, got {}",
            if n == 1 { "" } else { "s" },
            args.len()
        )))
    }
}

/// The functions [`eval`] knows, for messages and tool descriptions.
pub const FUNCTIONS: &[&str] = &[
    "sqrt", "cbrt", "abs", "exp", "ln", "log", "log2", "log10", "sin", "cos", "tan", "asin",
    "acos", "atan", "atan2", "sinh", "cosh", "tanh", "floor", "ceil", "round", "trunc", "min",
    "max", "hypot", "deg", "rad",
];

fn call(name: &str, a: &[f64]) -> Result<f64, MathError> {
    let one = |f: fn(f64) -> f64| -> Result<f64, MathError> {
        arity(name, a, 1)?;
        Ok(f(a[0]))
    };
    let v = match name {
        "sqrt" => {
            arity(name, a, 1)?;
            if a[0] < 0.0 {
                return Err(MathError::new(format!(
                    "sqrt of a negative number ({}) has no real value",
                    a[0]
                )));
            }
            a[0].sqrt()
        }
        "cbrt" => one(f64::cbrt)?,
        "abs" => one(f64::abs)?,
        "exp" => one(f64::exp)?,
        "ln" | "log" | "log2" | "log10" if a.len() == 1 => {
            if a[0] <= 0.0 {
                return Err(MathError::new(format!(
                    "{name} is defined only for positive numbers, got {}",
                    a[0]
                )));
            }
            match name {
                "ln" => a[0].ln(),
                "log2" => a[0].log2(),
                _ => a[0].log10(),
            }
        }
        "log" => {
            arity(name, a, 2)?;
            if a[0] <= 0.0 || a[1] <= 0.0 || a[1] == 1.0 {
                return Err(MathError::new(
                    "log(x, base) needs x > 0 and a positive base other than 1",
                ));
            }
            a[0].log(a[1])
        }
        "sin" => one(f64::sin)?,
        "cos" => one(f64::cos)?,
        "tan" => one(f64::tan)?,
        "asin" | "acos" if a.len() == 1 && !(-1.0..=1.0).contains(&a[0]) => {
            return Err(MathError::new(format!(
                "{name} needs a value in [-1, 1], got {}",
                a[0]
            )));
        }
        "asin" => one(f64::asin)?,
        "acos" => one(f64::acos)?,
        "atan" => one(f64::atan)?,
        "sinh" => one(f64::sinh)?,
        "cosh" => one(f64::cosh)?,
        "tanh" => one(f64::tanh)?,
        "floor" => one(f64::floor)?,
        "ceil" => one(f64::ceil)?,
        "round" => one(f64::round)?,
        "trunc" => one(f64::trunc)?,
        "deg" => one(f64::to_degrees)?,
        "rad" => one(f64::to_radians)?,
        "atan2" => {
            arity(name, a, 2)?;
            a[0].atan2(a[1])
        }
        "hypot" => {
            arity(name, a, 2)?;
            a[0].hypot(a[1])
        }
        "min" | "max" => {
            if a.is_empty() {
                return Err(MathError::new(format!(
                    "{name} needs at least one argument"
                )));
            }
            let it = a.iter().copied();
            if name == "min" {
                it.fold(f64::INFINITY, f64::min)
            } else {
                it.fold(f64::NEG_INFINITY, f64::max)
            }
        }
        _ => {
            return Err(MathError::new(format!(
                "unknown function `{name}`; known: {}",
                FUNCTIONS.join(", ")
            )))
        }
    };
    check(name, v)
}

/// Evaluate a numeric expression (variables other than pi, e, tau are errors).
pub fn eval(e: &Expr) -> Result<f64, MathError> {
    let v = match e {
        Expr::Num(v) => *v,
        Expr::Var(name) => constant(name).ok_or_else(|| {
            MathError::new(format!(
                "unknown name `{name}`: the calculator knows numbers, pi, e, tau and functions; \
                 to solve for a variable, use the solver"
            ))
        })?,
        Expr::Neg(a) => -eval(a)?,
        Expr::Add(a, b) => eval(a)? + eval(b)?,
        Expr::Sub(a, b) => eval(a)? - eval(b)?,
        Expr::Mul(a, b) => eval(a)? * eval(b)?,
        Expr::Div(a, b) => {
            let d = eval(b)?;
            if d == 0.0 {
                return Err(MathError::new("division by zero"));
            }
            eval(a)? / d
        }
        Expr::Rem(a, b) => {
            let d = eval(b)?;
            if d == 0.0 {
                return Err(MathError::new("remainder by zero"));
            }
            eval(a)? % d
        }
        Expr::Pow(a, b) => {
            let (x, y) = (eval(a)?, eval(b)?);
            if x == 0.0 && y < 0.0 {
                return Err(MathError::new(
                    "zero to a negative power is division by zero",
                ));
            }
            if x < 0.0 && y.fract() != 0.0 {
                return Err(MathError::new(format!(
                    "{x} to the power {y} has no real value"
                )));
            }
            check("the power", x.powf(y))?
        }
        Expr::Fact(a) => {
            let x = eval(a)?;
            if x < 0.0 || x.fract() != 0.0 {
                return Err(MathError::new(format!(
                    "factorial needs a whole number ≥ 0, got {x}"
                )));
            }
            if x > 170.0 {
                return Err(MathError::new(format!(
                    "{x}! overflows (the limit is 170!)"
                )));
            }
            (1..=x as u64).map(|k| k as f64).product()
        }
        Expr::Call(name, args) => {
            let vals = args.iter().map(eval).collect::<Result<Vec<_>, _>>()?;
            call(name, &vals)?
        }
    };
    check("the result", v)
}

/// Parse and evaluate.
pub fn evaluate(input: &str) -> Result<f64, MathError> {
    eval(&parse(input)?)
}

/// Format a result the way people write it: integers without `.0`, others
/// rounded to 12 significant digits so 0.1 + 0.2 reads 0.3.
pub fn format_number(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    let digits = 12 - (v.abs().log10().floor() as i32) - 1;
    if (0..=15).contains(&digits) {
        let s = format!("{:.*}", digits as usize, v);
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{v:.11e}")
    }
}

/// A linear form: Σ coefficient·variable + constant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Linear {
    pub terms: BTreeMap<String, f64>,
    pub constant: f64,
}

impl Linear {
    fn scale(mut self, k: f64) -> Self {
        for v in self.terms.values_mut() {
            *v *= k;
        }
        self.constant *= k;
        self
    }
    fn add(mut self, other: Linear, sign: f64) -> Self {
        for (k, v) in other.terms {
            *self.terms.entry(k).or_default() += sign * v;
        }
        self.constant += sign * other.constant;
        self
    }
    fn as_constant(&self) -> Option<f64> {
        self.terms
            .values()
            .all(|v| *v == 0.0)
            .then_some(self.constant)
    }
}

/// Reduce an expression to a linear form; products of variables are errors.
pub fn linear(e: &Expr) -> Result<Linear, MathError> {
    let nonlinear = || {
        MathError::new("the equation is not linear (a variable is multiplied by a variable, divided by, or under a power or function)")
    };
    Ok(match e {
        Expr::Var(name) if constant(name).is_none() => Linear {
            terms: [(name.clone(), 1.0)].into_iter().collect(),
            constant: 0.0,
        },
        Expr::Neg(a) => linear(a)?.scale(-1.0),
        Expr::Add(a, b) => linear(a)?.add(linear(b)?, 1.0),
        Expr::Sub(a, b) => linear(a)?.add(linear(b)?, -1.0),
        Expr::Mul(a, b) => {
            let (x, y) = (linear(a)?, linear(b)?);
            match (x.as_constant(), y.as_constant()) {
                (Some(k), _) => y.scale(k),
                (_, Some(k)) => x.scale(k),
                _ => return Err(nonlinear()),
            }
        }
        Expr::Div(a, b) => {
            let d = linear(b)?.as_constant().ok_or_else(nonlinear)?;
            if d == 0.0 {
                return Err(MathError::new("division by zero"));
            }
            linear(a)?.scale(1.0 / d)
        }
        other => {
            // Anything else must be a constant.
            let has_var = vars(other).iter().any(|v| constant(v).is_none());
            if has_var {
                return Err(nonlinear());
            }
            Linear {
                terms: BTreeMap::new(),
                constant: eval(other)?,
            }
        }
    })
}

/// The variable names in an expression (constants excluded), sorted.
pub fn variables(e: &Expr) -> Vec<String> {
    let mut v: Vec<String> = vars(e)
        .into_iter()
        .filter(|n| constant(n).is_none())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn vars(e: &Expr) -> Vec<String> {
    match e {
        Expr::Num(_) => vec![],
        Expr::Var(n) => vec![n.clone()],
        Expr::Neg(a) | Expr::Fact(a) => vars(a),
        Expr::Add(a, b)
        | Expr::Sub(a, b)
        | Expr::Mul(a, b)
        | Expr::Div(a, b)
        | Expr::Rem(a, b)
        | Expr::Pow(a, b) => {
            let mut v = vars(a);
            v.extend(vars(b));
            v
        }
        Expr::Call(_, args) => args.iter().flat_map(vars).collect(),
    }
}

/// Highest polynomial degree accepted.
pub const MAX_DEGREE: usize = 64;

/// Reduce an expression in one variable `x` to polynomial coefficients,
/// lowest degree first.
pub fn polynomial(e: &Expr, x: &str) -> Result<Vec<f64>, MathError> {
    fn trim(mut p: Vec<f64>) -> Vec<f64> {
        while p.len() > 1 && p.last() == Some(&0.0) {
            p.pop();
        }
        p
    }
    fn mul(a: &[f64], b: &[f64]) -> Result<Vec<f64>, MathError> {
        if a.len() + b.len() - 1 > MAX_DEGREE + 1 {
            return Err(MathError::new(format!(
                "the polynomial's degree is over {MAX_DEGREE}"
            )));
        }
        let mut out = vec![0.0; a.len() + b.len() - 1];
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                out[i + j] += x * y;
            }
        }
        Ok(out)
    }
    fn add(a: &[f64], b: &[f64], sign: f64) -> Vec<f64> {
        let mut out = vec![0.0; a.len().max(b.len())];
        for (i, v) in a.iter().enumerate() {
            out[i] += v;
        }
        for (i, v) in b.iter().enumerate() {
            out[i] += sign * v;
        }
        out
    }
    let not_poly = || MathError::new(format!("not a polynomial in {x}"));
    let p = match e {
        Expr::Var(n) if n == x => vec![0.0, 1.0],
        Expr::Neg(a) => polynomial(a, x)?.into_iter().map(|c| -c).collect(),
        Expr::Add(a, b) => add(&polynomial(a, x)?, &polynomial(b, x)?, 1.0),
        Expr::Sub(a, b) => add(&polynomial(a, x)?, &polynomial(b, x)?, -1.0),
        Expr::Mul(a, b) => mul(&polynomial(a, x)?, &polynomial(b, x)?)?,
        Expr::Div(a, b) => {
            let d = polynomial(b, x)?;
            if d.len() != 1 {
                return Err(not_poly());
            }
            if d[0] == 0.0 {
                return Err(MathError::new("division by zero"));
            }
            polynomial(a, x)?.into_iter().map(|c| c / d[0]).collect()
        }
        Expr::Pow(a, b) => {
            let base = polynomial(a, x)?;
            let n = eval(b).map_err(|_| not_poly())?;
            if base.len() == 1 {
                vec![check("the power", base[0].powf(n))?]
            } else {
                if n < 0.0 || n.fract() != 0.0 || n as usize > MAX_DEGREE {
                    return Err(MathError::new(format!(
                        "{x} must be raised to a whole power between 0 and {MAX_DEGREE}"
                    )));
                }
                let mut out = vec![1.0];
                for _ in 0..n as usize {
                    out = mul(&out, &base)?;
                }
                out
            }
        }
        other => {
            if vars(other).iter().any(|v| v == x) {
                return Err(not_poly());
            }
            vec![eval(other)?]
        }
    };
    Ok(trim(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &str) -> f64 {
        evaluate(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn precedence_and_associativity() {
        assert_eq!(ev("2+3*4"), 14.0);
        assert_eq!(ev("(2+3)*4"), 20.0);
        assert_eq!(ev("2^3^2"), 512.0);
        assert_eq!(ev("-2^2"), -4.0);
        assert_eq!(ev("10-4-3"), 3.0);
        assert_eq!(ev("100/10/5"), 2.0);
        assert_eq!(ev("7 % 4"), 3.0);
        assert_eq!(ev("2**10"), 1024.0);
        assert_eq!(ev("5!"), 120.0);
        assert_eq!(ev("2(3+4)"), 14.0);
        assert_eq!(ev("1_000 × 3"), 3000.0);
        assert_eq!(ev("1.5e3 + 2E-1"), 1500.2);
    }

    #[test]
    fn functions_and_constants() {
        assert_eq!(ev("sqrt(16) + abs(-2)"), 6.0);
        assert!((ev("sin(pi/2)") - 1.0).abs() < 1e-12);
        assert_eq!(ev("max(1, 7, 3) - min(4, 2)"), 5.0);
        assert!((ev("log(8, 2)") - 3.0).abs() < 1e-12);
        assert_eq!(ev("log(1000)"), 3.0);
        assert!((ev("ln(e)") - 1.0).abs() < 1e-12);
    }

    #[test]
    fn errors_are_clear() {
        let e = evaluate("1/0").unwrap_err();
        assert!(e.message.contains("division by zero"), "{e}");
        let e = evaluate("2 + (3").unwrap_err();
        assert!(e.to_string().contains("missing `)`"), "{e}");
        let e = evaluate("2 + 3)").unwrap_err();
        assert_eq!(e.at, Some(5));
        let e = evaluate("sqrt(-1)").unwrap_err();
        assert!(e.message.contains("negative"), "{e}");
        let e = evaluate("foo(2)").unwrap_err();
        assert!(e.message.contains("unknown function `foo`"), "{e}");
        let e = evaluate("x + 1").unwrap_err();
        assert!(e.message.contains("unknown name `x`"), "{e}");
        assert!(evaluate("").is_err());
        assert!(evaluate("2 $ 3").unwrap_err().message.contains('$'));
        assert!(evaluate("10^400").unwrap_err().message.contains("overflow"));
        assert!(evaluate(&"(".repeat(5000))
            .unwrap_err()
            .message
            .contains("deeply"));
        assert!(evaluate(&"1+".repeat(6000)).is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_number(ev("0.1+0.2")), "0.3");
        assert_eq!(format_number(4.0), "4");
        assert_eq!(format_number(-2.5), "-2.5");
        assert_eq!(format_number(1.0 / 3.0), "0.333333333333");
        assert_eq!(format_number(1e20), "1.00000000000e20");
    }

    #[test]
    fn linear_and_polynomial_forms() {
        let l = linear(&parse_equation("2x + 3y = 7 - y").unwrap()).unwrap();
        assert_eq!(l.terms["x"], 2.0);
        assert_eq!(l.terms["y"], 4.0);
        assert_eq!(l.constant, -7.0);
        assert!(linear(&parse_equation("x*y = 1").unwrap()).is_err());
        let p = polynomial(&parse_equation("x^2 - 5x + 6 = 0").unwrap(), "x").unwrap();
        assert_eq!(p, vec![6.0, -5.0, 1.0]);
        let p = polynomial(&parse("(x-1)(x+1)").unwrap(), "x").unwrap();
        assert_eq!(p, vec![-1.0, 0.0, 1.0]);
        assert!(polynomial(&parse("sin(x)").unwrap(), "x").is_err());
        assert!(polynomial(&parse("x^100").unwrap(), "x").is_err());
    }
}
