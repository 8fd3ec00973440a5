//! Stockade's credential helper for git, Docker and kubectl: one static executable with no
//! runtime dependency, for workspace images without Python.
//!
//! The role comes from the name it is called by (`git-credential-stockade`,
//! `docker-credential-stockade`, `kubectl-credential-stockade`, e.g. through symlinks) or from
//! the first argument (`stockade-credential-helper git get`). It speaks plain HTTP/1.1 to the
//! broker over the unix socket named by `STOCKADE_CREDENTIAL_SOCKET`; a per-session socket
//! identifies the session by itself, and `STOCKADE_TOKEN`, when set, is sent as a bearer token
//! (for the broker's shared socket). Nothing is written to disk.
//!
//! Behaviour, messages and exit codes are those of the Python helpers
//! (`stockade.helpers._fallback`); the same protocol tests run against both.

use std::env;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::exit;
use std::time::Duration;

const ENV_SOCKET: &str = "STOCKADE_CREDENTIAL_SOCKET";
const ENV_TOKEN: &str = "STOCKADE_TOKEN";
const MAX_INPUT_BYTES: usize = 64 * 1024;
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
const MAX_HEAD_BYTES: usize = 64 * 1024;
const TIMEOUT_SECONDS: u64 = 10;
const MAX_JSON_DEPTH: usize = 32;

const DOCKER_NOT_FOUND: &str = "credentials not found in native keychain";
const DOCKER_MISSING_URL: &str = "no credentials server URL";
const DOCKER_HUB: &str = "https://index.docker.io/v1/";
const DOCKER_HUB_HOSTS: [&str; 3] = ["index.docker.io", "docker.io", "registry-1.docker.io"];
const EXEC_API_VERSIONS: [&str; 2] = [
    "client.authentication.k8s.io/v1",
    "client.authentication.k8s.io/v1beta1",
];

/// Why a call failed: the broker has nothing stored (HTTP 404), or anything else as one line.
enum Fail {
    Missing,
    Error(String),
}

type Result<T> = std::result::Result<T, Fail>;

fn err<T>(message: impl Into<String>) -> Result<T> {
    Err(Fail::Error(message.into()))
}

// -- JSON -----------------------------------------------------------------------------------------

/// A parsed JSON value; objects keep their key order.
enum Json {
    Null,
    Bool(bool),
    Number { text: String, integer: bool },
    Str(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    fn get(&self, key: &str) -> Option<&Json> {
        match self {
            Json::Object(items) => items.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Json::Str(s) => Some(s),
            _ => None,
        }
    }

    fn truthy(&self) -> bool {
        match self {
            Json::Null => false,
            Json::Bool(b) => *b,
            Json::Number { text, .. } => text.parse::<f64>().map(|n| n != 0.0).unwrap_or(true),
            Json::Str(s) => !s.is_empty(),
            Json::Array(a) => !a.is_empty(),
            Json::Object(o) => !o.is_empty(),
        }
    }
}

struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Parser<'a> {
    fn parse(text: &'a str) -> Option<Json> {
        let mut parser = Parser { bytes: text.as_bytes(), pos: 0 };
        let value = parser.value(0)?;
        parser.space();
        if parser.pos == parser.bytes.len() {
            Some(value)
        } else {
            None
        }
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, word: &str) -> Option<()> {
        if self.bytes[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Some(())
        } else {
            None
        }
    }

    fn value(&mut self, depth: usize) -> Option<Json> {
        if depth > MAX_JSON_DEPTH {
            return None;
        }
        self.space();
        match *self.bytes.get(self.pos)? {
            b'n' => self.eat("null").map(|_| Json::Null),
            b't' => self.eat("true").map(|_| Json::Bool(true)),
            b'f' => self.eat("false").map(|_| Json::Bool(false)),
            b'"' => self.string().map(Json::Str),
            b'[' => {
                self.pos += 1;
                let mut items = Vec::new();
                self.space();
                if self.bytes.get(self.pos) == Some(&b']') {
                    self.pos += 1;
                    return Some(Json::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    self.space();
                    match *self.bytes.get(self.pos)? {
                        b',' => self.pos += 1,
                        b']' => {
                            self.pos += 1;
                            return Some(Json::Array(items));
                        }
                        _ => return None,
                    }
                }
            }
            b'{' => {
                self.pos += 1;
                let mut items = Vec::new();
                self.space();
                if self.bytes.get(self.pos) == Some(&b'}') {
                    self.pos += 1;
                    return Some(Json::Object(items));
                }
                loop {
                    self.space();
                    if self.bytes.get(self.pos) != Some(&b'"') {
                        return None;
                    }
                    let key = self.string()?;
                    self.space();
                    if self.bytes.get(self.pos) != Some(&b':') {
                        return None;
                    }
                    self.pos += 1;
                    let value = self.value(depth + 1)?;
                    items.push((key, value));
                    self.space();
                    match *self.bytes.get(self.pos)? {
                        b',' => self.pos += 1,
                        b'}' => {
                            self.pos += 1;
                            return Some(Json::Object(items));
                        }
                        _ => return None,
                    }
                }
            }
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn number(&mut self) -> Option<Json> {
        let start = self.pos;
        let mut integer = true;
        if self.bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let digits = self.pos;
        while let Some(b'0'..=b'9') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        if self.pos == digits {
            return None;
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            integer = false;
            self.pos += 1;
            let frac = self.pos;
            while let Some(b'0'..=b'9') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            if self.pos == frac {
                return None;
            }
        }
        if let Some(b'e' | b'E') = self.bytes.get(self.pos) {
            integer = false;
            self.pos += 1;
            if let Some(b'+' | b'-') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            let exp = self.pos;
            while let Some(b'0'..=b'9') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
            if self.pos == exp {
                return None;
            }
        }
        let text = std::str::from_utf8(&self.bytes[start..self.pos]).ok()?.to_string();
        Some(Json::Number { text, integer })
    }

    fn hex4(&mut self) -> Option<u32> {
        let digits = self.bytes.get(self.pos..self.pos + 4)?;
        let text = std::str::from_utf8(digits).ok()?;
        let value = u32::from_str_radix(text, 16).ok()?;
        self.pos += 4;
        Some(value)
    }

    fn string(&mut self) -> Option<String> {
        self.pos += 1; // the opening quote
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(&b) = self.bytes.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(std::str::from_utf8(&self.bytes[start..self.pos]).ok()?);
            match *self.bytes.get(self.pos)? {
                b'"' => {
                    self.pos += 1;
                    return Some(out);
                }
                b'\\' => {
                    self.pos += 1;
                    let escape = *self.bytes.get(self.pos)?;
                    self.pos += 1;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let first = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&first) {
                                self.eat("\\u")?;
                                let second = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&second) {
                                    return None;
                                }
                                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                            } else {
                                first
                            };
                            out.push(char::from_u32(code)?);
                        }
                        _ => return None,
                    }
                }
                _ => return None, // a raw control character
            }
        }
    }
}

/// `text` as a JSON string literal.
fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn object(pairs: &[(&str, String)]) -> String {
    let items: Vec<String> = pairs.iter().map(|(k, v)| format!("{}: {}", quote(k), v)).collect();
    format!("{{{}}}", items.join(", "))
}

// -- text -----------------------------------------------------------------------------------------

/// One printable line from broker- or peer-supplied text, at most `limit` characters.
fn clean(text: &str, limit: usize) -> String {
    let line: String = text
        .chars()
        .take(limit)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = line.trim();
    if trimmed.is_empty() {
        "no detail".to_string()
    } else {
        trimmed.to_string()
    }
}

fn printable(text: &str) -> bool {
    text.chars().all(|c| !c.is_control())
}

fn read_input() -> Result<String> {
    let mut data = Vec::new();
    let stdin = io::stdin();
    let mut handle = stdin.lock().take(MAX_INPUT_BYTES as u64 + 1);
    if handle.read_to_end(&mut data).is_err() {
        return err("cannot read the input");
    }
    if data.len() > MAX_INPUT_BYTES {
        return err(format!("input larger than {} bytes", MAX_INPUT_BYTES));
    }
    String::from_utf8(data).or_else(|_| err("input is not UTF-8"))
}

fn write_out(text: &str) {
    let stdout = io::stdout();
    let mut handle = stdout.lock();
    let _ = handle.write_all(text.as_bytes());
    let _ = handle.flush();
}

fn fail(prog: &str, message: &str, also_stdout: bool) -> ! {
    if also_stdout {
        write_out(&format!("{}\n", message));
    }
    let _ = writeln!(io::stderr(), "{}: {}", prog, message);
    exit(1)
}

// -- HTTP over the unix socket --------------------------------------------------------------------

fn error_message(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let doc = Parser::parse(&text);
    let pick = |key: &str| -> Option<String> {
        let value = doc.as_ref()?.get(key)?;
        if !value.truthy() {
            return None;
        }
        Some(match value {
            Json::Str(s) => s.clone(),
            Json::Number { text, .. } => text.clone(),
            Json::Bool(b) => if *b { "True".into() } else { "False".into() },
            _ => "".into(),
        })
    };
    let reason = clean(&pick("reason").or_else(|| pick("message")).unwrap_or_default(), 300);
    match status {
        401 => format!("session token rejected ({}); reconnect to get a fresh session", reason),
        403 => format!("denied by policy ({})", reason),
        503 => format!("secrets backend unavailable ({})", reason),
        400 | 413 | 422 => format!("request refused as malformed ({})", reason),
        _ => format!("broker answered HTTP {} ({})", status, reason),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Status and body of one HTTP/1.1 response (Content-Length, chunked, or until close).
fn read_response(stream: &mut UnixStream) -> std::result::Result<(u16, Vec<u8>), String> {
    let mut data: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = find(&data, b"\r\n\r\n") {
            break at;
        }
        if data.len() > MAX_HEAD_BYTES {
            return Err("response headers too large".into());
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the broker closed the connection".into());
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.split_whitespace();
    let version = parts.next().unwrap_or("");
    let code = parts.next().unwrap_or("");
    if !version.starts_with("HTTP/1.") || code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err("not an HTTP response".into());
    }
    let status: u16 = code.parse().map_err(|_| "not an HTTP response".to_string())?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let (name, value) = match line.split_once(':') {
            Some(pair) => pair,
            None => continue,
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        if name == "content-length" {
            length = Some(value.parse().map_err(|_| "bad Content-Length".to_string())?);
        } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let mut body: Vec<u8> = data[head_end + 4..].to_vec();
    let mut read_more = |body: &mut Vec<u8>| -> std::result::Result<bool, String> {
        if body.len() > MAX_RESPONSE_BYTES + 64 {
            return Err("broker response too large".into());
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        body.extend_from_slice(&buf[..n]);
        Ok(n > 0)
    };
    if chunked {
        let mut out = Vec::new();
        let mut at = 0usize;
        loop {
            let line_end = loop {
                if let Some(p) = find(&body[at..], b"\r\n") {
                    break at + p;
                }
                if !read_more(&mut body)? {
                    return Err("truncated chunked response".into());
                }
            };
            let size_text = String::from_utf8_lossy(&body[at..line_end]).into_owned();
            let size_text = size_text.split(';').next().unwrap_or("").trim().to_string();
            let size = usize::from_str_radix(&size_text, 16).map_err(|_| "bad chunk size".to_string())?;
            if size == 0 {
                return Ok((status, out));
            }
            if size > MAX_RESPONSE_BYTES || out.len() + size > MAX_RESPONSE_BYTES {
                return Err("broker response too large".into());
            }
            let start = line_end + 2;
            while body.len() < start + size + 2 {
                if !read_more(&mut body)? {
                    return Err("truncated chunked response".into());
                }
            }
            out.extend_from_slice(&body[start..start + size]);
            at = start + size + 2;
        }
    }
    match length {
        Some(n) => {
            if n > MAX_RESPONSE_BYTES {
                return Err("broker response too large".into());
            }
            while body.len() < n {
                if !read_more(&mut body)? {
                    return Err("truncated response".into());
                }
            }
            body.truncate(n);
        }
        None => {
            while read_more(&mut body)? {
                if body.len() > MAX_RESPONSE_BYTES {
                    return Err("broker response too large".into());
                }
            }
        }
    }
    Ok((status, body))
}

/// POST `body` (JSON) to the broker's `path` over the session socket; the decoded JSON object.
fn request(path: &str, body: &str) -> Result<Json> {
    let socket = env::var(ENV_SOCKET).unwrap_or_default();
    if socket.is_empty() {
        return err(format!("{} is not set; run inside a Stockade session", ENV_SOCKET));
    }
    if !socket.starts_with('/') {
        return err(format!("{} must be an absolute path", ENV_SOCKET));
    }
    let token = env::var(ENV_TOKEN).unwrap_or_default();
    let token = token.trim();
    if token.contains(|c| c == '\r' || c == '\n' || c == '\0' || c == ' ') {
        return err(format!("{} contains characters a token cannot have", ENV_TOKEN));
    }
    let mut head = format!("POST {} HTTP/1.1\r\nHost: stockade\r\n", path);
    if !token.is_empty() {
        head.push_str(&format!("Authorization: Bearer {}\r\n", token));
    }
    head.push_str(&format!(
        "Content-Type: application/json\r\nAccept: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    head.push_str(body);
    let unreachable = |detail: String| {
        Fail::Error(format!("cannot reach the broker at {}: {}", clean(&socket, 200), clean(&detail, 120)))
    };
    let mut stream = UnixStream::connect(&socket).map_err(|e| unreachable(e.to_string()))?;
    let timeout = Some(Duration::from_secs(TIMEOUT_SECONDS));
    let _ = stream.set_read_timeout(timeout);
    let _ = stream.set_write_timeout(timeout);
    stream.write_all(head.as_bytes()).map_err(|e| unreachable(e.to_string()))?;
    let (status, data) = read_response(&mut stream).map_err(unreachable)?;
    if status == 404 {
        return Err(Fail::Missing);
    }
    if status != 200 {
        return err(error_message(status, &data));
    }
    let text = String::from_utf8(data).or_else(|_| err("broker answered with malformed JSON"))?;
    match Parser::parse(&text) {
        Some(doc @ Json::Object(_)) => Ok(doc),
        _ => err("broker answered with malformed JSON"),
    }
}

fn string_field(doc: &Json, key: &str) -> String {
    match doc.get(key) {
        Some(Json::Str(s)) => s.clone(),
        Some(Json::Number { text, .. }) => text.clone(),
        _ => String::new(),
    }
}

// -- git ------------------------------------------------------------------------------------------

/// git's credential attributes: `key=value` lines up to a blank line or the end.
fn parse_git_attributes(text: &str) -> Result<Vec<(String, String)>> {
    let mut attrs: Vec<(String, String)> = Vec::new();
    let set = |attrs: &mut Vec<(String, String)>, key: &str, value: &str| {
        attrs.retain(|(k, _)| k != key);
        attrs.push((key.to_string(), value.to_string()));
    };
    for raw in text.split('\n') {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        match line.split_once('=') {
            Some((key, value)) if !key.is_empty() && !line.contains('\0') => set(&mut attrs, key, value),
            _ => return err(format!("malformed credential line '{}'", clean(line, 60))),
        }
    }
    let get = |attrs: &Vec<(String, String)>, key: &str| attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    if let (Some(url), None) = (get(&attrs, "url"), get(&attrs, "host")) {
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest.to_string()),
            None => (String::new(), String::new()),
        };
        if get(&attrs, "protocol").is_none() {
            set(&mut attrs, "protocol", &scheme);
        }
        let cut = rest.find(|c| c == '/' || c == '?' || c == '#').unwrap_or(rest.len());
        let netloc = &rest[..cut];
        if !netloc.is_empty() {
            let host = netloc.rsplit('@').next().unwrap_or("");
            set(&mut attrs, "host", host);
        }
        let tail = &rest[cut..];
        let path = &tail[..tail.find(|c| c == '?' || c == '#').unwrap_or(tail.len())];
        if !path.trim_matches('/').is_empty() && get(&attrs, "path").is_none() {
            set(&mut attrs, "path", path.trim_start_matches('/'));
        }
    }
    Ok(attrs)
}

fn git_credential(action: &str) -> Result<()> {
    let text = read_input()?;
    if action != "get" {
        return Ok(()); // store, erase: Stockade keeps nothing; unknown actions are ignored too
    }
    let attrs = parse_git_attributes(&text)?;
    let get = |key: &str| attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).unwrap_or("");
    let protocol = get("protocol");
    let host = get("host");
    if (protocol != "http" && protocol != "https") || host.is_empty() {
        return Ok(()); // not ours: git tries its next helper or prompts
    }
    let mut pairs = vec![("protocol", quote(protocol)), ("host", quote(host))];
    if !get("path").is_empty() {
        pairs.push(("path", quote(get("path"))));
    }
    if !get("username").is_empty() {
        pairs.push(("username", quote(get("username"))));
    }
    let doc = match request("/v1/credentials/git", &object(&pairs)) {
        Err(Fail::Missing) => return Ok(()),
        other => other?,
    };
    let username = string_field(&doc, "username");
    let password = string_field(&doc, "password");
    if username.contains(|c| c == '\n' || c == '\0') || password.contains(|c| c == '\n' || c == '\0') {
        return err("broker returned a credential git cannot represent");
    }
    let mut out = format!("protocol={}\nhost={}\n", protocol, host);
    if !username.is_empty() {
        out.push_str(&format!("username={}\n", username));
    }
    out.push_str(&format!("password={}\n", password));
    if let Some(Json::Number { text, integer: true }) = doc.get("password_expiry_utc") {
        out.push_str(&format!("password_expiry_utc={}\n", text));
    }
    write_out(&out);
    Ok(())
}

fn git_main(args: &[String]) -> ! {
    let prog = "git-credential-stockade";
    if args.len() != 1 {
        fail(prog, "usage: git-credential-stockade <get|store|erase>", false);
    }
    match git_credential(&args[0]) {
        Ok(()) => exit(0),
        Err(Fail::Missing) => exit(0),
        Err(Fail::Error(message)) => {
            write_out("quit=1\n"); // git must not prompt for a password the user should not type
            fail(prog, &message, false)
        }
    }
}

// -- docker ---------------------------------------------------------------------------------------

fn docker_credential(action: &str) -> Result<()> {
    match action {
        "version" => {
            write_out("docker-credential-stockade (Stockade)\n");
            Ok(())
        }
        "store" | "erase" => {
            read_input()?;
            err(format!("credentials are managed by Stockade; {} is not supported", action))
        }
        "list" => {
            let doc = request("/v1/credentials/docker/list", "{}")?;
            let items = match doc.get("credentials") {
                Some(Json::Object(items)) => items,
                None => return docker_print_list(&[]),
                _ => return err("broker answered with malformed JSON"),
            };
            let mut out: Vec<(String, String)> = Vec::new();
            for (key, value) in items {
                let server = if DOCKER_HUB_HOSTS.contains(&key.as_str()) { DOCKER_HUB.to_string() } else { key.clone() };
                let user = value.as_str().unwrap_or("").to_string();
                out.retain(|(k, _)| *k != server);
                out.push((server, user));
            }
            docker_print_list(&out)
        }
        "get" => {
            let input = read_input()?;
            let server_url = input.trim();
            if server_url.is_empty() {
                return err(DOCKER_MISSING_URL);
            }
            if server_url.chars().count() > 2048 || !printable(server_url) {
                return err("malformed credentials server URL");
            }
            let body = object(&[("server_url", quote(server_url))]);
            let doc = request("/v1/credentials/docker", &body)?;
            let answer = object(&[
                ("ServerURL", quote(server_url)),
                ("Username", quote(&string_field(&doc, "username"))),
                ("Secret", quote(&string_field(&doc, "secret"))),
            ]);
            write_out(&format!("{}\n", answer));
            Ok(())
        }
        other => err(format!("Unknown credential action `{}`", clean(other, 40))),
    }
}

fn docker_print_list(items: &[(String, String)]) -> Result<()> {
    let pairs: Vec<String> = items.iter().map(|(k, v)| format!("{}: {}", quote(k), quote(v))).collect();
    write_out(&format!("{{{}}}\n", pairs.join(", ")));
    Ok(())
}

fn docker_main(args: &[String]) -> ! {
    let prog = "docker-credential-stockade";
    if args.len() != 1 {
        fail(prog, "Usage: docker-credential-stockade <store|get|erase|list|version>", true);
    }
    match docker_credential(&args[0]) {
        Ok(()) => exit(0),
        Err(Fail::Missing) => {
            write_out(&format!("{}\n", DOCKER_NOT_FOUND));
            exit(1)
        }
        Err(Fail::Error(message)) => fail(prog, &message, true),
    }
}

// -- kubectl --------------------------------------------------------------------------------------

/// The host of an URL as Python's `urlsplit(url).hostname` gives it (lower case, no port).
fn url_hostname(url: &str) -> String {
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest,
        None => return String::new(),
    };
    let netloc = &rest[..rest.find(|c| c == '/' || c == '?' || c == '#').unwrap_or(rest.len())];
    let host_port = netloc.rsplit('@').next().unwrap_or("");
    let host = if let Some(inner) = host_port.strip_prefix('[') {
        inner.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    };
    host.to_ascii_lowercase()
}

fn kubectl_credential(args: &[String]) -> Result<()> {
    let raw = env::var("KUBERNETES_EXEC_INFO").unwrap_or_default();
    let info = if raw.is_empty() {
        Json::Object(Vec::new())
    } else {
        if raw.len() > MAX_INPUT_BYTES {
            return err("KUBERNETES_EXEC_INFO is too large");
        }
        match Parser::parse(&raw) {
            Some(doc @ Json::Object(_)) => doc,
            Some(_) => return err("KUBERNETES_EXEC_INFO is not a JSON object"),
            None => return err("KUBERNETES_EXEC_INFO is not JSON"),
        }
    };
    let api_version = match info.get("apiVersion") {
        Some(value) if value.truthy() => match value {
            Json::Str(s) => s.clone(),
            Json::Number { text, .. } => text.clone(),
            _ => String::from("?"),
        },
        _ => EXEC_API_VERSIONS[0].to_string(),
    };
    if !EXEC_API_VERSIONS.contains(&api_version.as_str()) {
        return err(format!("unsupported ExecCredential apiVersion {}", clean(&api_version, 80)));
    }
    let mut name = String::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--cluster" && i + 1 < args.len() {
            name = args[i + 1].clone();
            i += 2;
        } else if let Some(value) = arg.strip_prefix("--cluster=") {
            name = value.to_string();
            i += 1;
        } else {
            return err(format!("unknown argument '{}'; usage: [--cluster NAME]", clean(arg, 60)));
        }
    }
    let cluster = info.get("spec").and_then(|spec| spec.get("cluster"));
    let server = cluster.and_then(|c| c.get("server")).and_then(Json::as_str).map(str::to_string);
    if name.is_empty() {
        if let Some(config_name) = cluster.and_then(|c| c.get("config")).and_then(|c| c.get("cluster")).and_then(Json::as_str) {
            name = config_name.to_string();
        }
    }
    if name.is_empty() {
        if let Some(server) = server.as_deref().filter(|s| !s.is_empty()) {
            name = url_hostname(server);
        }
    }
    if name.is_empty() {
        return err("no cluster named: pass --cluster NAME or set provideClusterInfo: true");
    }
    let mut pairs = vec![("cluster", quote(&name))];
    if let Some(server) = server.as_deref().filter(|s| !s.is_empty()) {
        pairs.push(("server", quote(server)));
    }
    let doc = match request("/v1/credentials/kubernetes", &object(&pairs)) {
        Err(Fail::Missing) => {
            return err(format!("no Kubernetes credential for cluster '{}'", clean(&name, 80)))
        }
        other => other?,
    };
    let token = match doc.get("token") {
        Some(Json::Str(t)) if !t.is_empty() => t.clone(),
        _ => return err("broker answered with malformed JSON"),
    };
    let expires = match doc.get("expiration_timestamp") {
        Some(Json::Str(e)) => e.clone(),
        _ => return err("broker answered with malformed JSON"),
    };
    let status = object(&[("token", quote(&token)), ("expirationTimestamp", quote(&expires))]);
    let credential = object(&[
        ("apiVersion", quote(&api_version)),
        ("kind", quote("ExecCredential")),
        ("status", status),
    ]);
    write_out(&format!("{}\n", credential));
    Ok(())
}

fn kubectl_main(args: &[String]) -> ! {
    match kubectl_credential(args) {
        Ok(()) => exit(0),
        Err(Fail::Missing) => fail("kubectl-credential-stockade", "no credential", false),
        Err(Fail::Error(message)) => fail("kubectl-credential-stockade", &message, false),
    }
}

// -- dispatch -------------------------------------------------------------------------------------

fn main() {
    let argv: Vec<String> = env::args_os().map(|a| a.to_string_lossy().into_owned()).collect();
    let called = argv.first().map(String::as_str).unwrap_or("");
    let base = called.rsplit('/').next().unwrap_or(called);
    let rest = if argv.len() > 1 { &argv[1..] } else { &[] };
    if base.starts_with("git-credential-") {
        git_main(rest);
    } else if base.starts_with("docker-credential-") {
        docker_main(rest);
    } else if base.starts_with("kubectl-credential-") {
        kubectl_main(rest);
    }
    match rest.first().map(String::as_str) {
        Some("git") => git_main(&rest[1..]),
        Some("docker") => docker_main(&rest[1..]),
        Some("kubectl") => kubectl_main(&rest[1..]),
        _ => {
            let _ = writeln!(io::stderr(), "usage: stockade-credential-helper {{git|docker|kubectl}} ARGS...");
            exit(2)
        }
    }
}
