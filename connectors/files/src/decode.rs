//! Bytes to text: binary detection and encoding detection.

/// Text decoded from a file, and the encoding when it was not UTF-8.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The text (BOM removed).
    pub text: String,
    /// Name of the encoding it was converted from, when not UTF-8.
    pub converted_from: Option<&'static str>,
}

/// Decode file bytes to text, or say why the file is not text.
pub fn decode(bytes: &[u8]) -> Result<Decoded, String> {
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    // Byte-order marks decide the encoding outright.
    if let Some((enc, bom_len)) = encoding_rs::Encoding::for_bom(bytes) {
        let (text, had_errors) = enc.decode_without_bom_handling(&bytes[bom_len..]);
        if had_errors {
            return Err(format!(
                "starts with a {} byte-order mark but is not valid {}; re-save it as UTF-8",
                enc.name(),
                enc.name()
            ));
        }
        let converted_from = (enc != encoding_rs::UTF_8).then(|| enc.name());
        return finish(text.into_owned(), converted_from);
    }
    let head = &bytes[..bytes.len().min(8192)];
    if head.contains(&0) {
        return Err("binary file (contains NUL bytes)".into());
    }
    match std::str::from_utf8(bytes) {
        Ok(s) => finish(s.to_string(), None),
        Err(_) => {
            let mut det = chardetng::EncodingDetector::new(chardetng::Iso2022JpDetection::Deny);
            det.feed(bytes, true);
            let enc = det.guess(None, chardetng::Utf8Detection::Allow);
            match enc.decode_without_bom_handling_and_without_replacement(bytes) {
                Some(text) if enc != encoding_rs::UTF_8 => finish(text.into_owned(), Some(enc.name())),
                _ => Err(
                    "not valid UTF-8 and no known encoding fits; convert it to UTF-8 (e.g. with iconv)"
                        .into(),
                ),
            }
        }
    }
}

fn finish(text: String, converted_from: Option<&'static str>) -> Result<Decoded, String> {
    if text.trim().is_empty() {
        return Err("empty file (only whitespace)".into());
    }
    // Mostly control characters means a binary format that happens to decode.
    let sample: Vec<char> = text.chars().take(8192).collect();
    let control = sample
        .iter()
        .filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t' | '\u{c}'))
        .count();
    if control * 20 > sample.len() {
        return Err("binary file (mostly control characters)".into());
    }
    Ok(Decoded {
        text,
        converted_from,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_passes() {
        assert_eq!(decode("héllo".as_bytes()).unwrap().text, "héllo");
    }

    #[test]
    fn bom_is_stripped() {
        let d = decode(b"\xEF\xBB\xBFhi").unwrap();
        assert_eq!(d.text, "hi");
        assert_eq!(d.converted_from, None);
    }

    #[test]
    fn utf16_with_bom_is_converted() {
        let mut b = vec![0xFF, 0xFE];
        for u in "hello wörld".encode_utf16() {
            b.extend_from_slice(&u.to_le_bytes());
        }
        let d = decode(&b).unwrap();
        assert_eq!(d.text, "hello wörld");
        assert_eq!(d.converted_from, Some("UTF-16LE"));
    }

    #[test]
    fn latin1_is_detected() {
        let b = b"Caf\xe9 cr\xe8me br\xfbl\xe9e, na\xefve fa\xe7ade and d\xe9j\xe0 vu in the r\xe9sum\xe9";
        let d = decode(b).unwrap();
        assert!(d.text.contains("Café crème"), "{}", d.text);
        assert!(d.converted_from.is_some());
    }

    #[test]
    fn binary_and_empty_are_refused() {
        assert!(decode(b"").unwrap_err().contains("empty"));
        assert!(decode(b"  \n ").unwrap_err().contains("empty"));
        assert!(decode(b"\x89PNG\r\n\x1a\n\0\0\0IHDR")
            .unwrap_err()
            .contains("binary"));
        assert!(decode(&[1u8, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3, 4, 5, 6, 7, 8])
            .unwrap_err()
            .contains("binary"));
    }
}
