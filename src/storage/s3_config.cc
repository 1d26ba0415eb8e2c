// S3 endpoint, region, addressing and credential resolution.
//
// Steps of ResolveConfig (the order is the contract in s3_config.h):
//  1. Read the s3cmd config (explicit path, which must exist, or ~/.s3cfg)
//     and the AWS shared credentials and config files. A missing file is
//     simply absent; an unreadable or malformed one is an error naming it.
//  2. Pick the profile (explicit, AWS_PROFILE, "default"). A profile that was
//     named but is in neither AWS file is an error when it is consulted.
//  3. Resolve credentials, then region, then endpoint (the default endpoint
//     needs the region), then scheme and addressing.
//
// Invariants: no message carries a secret, a session token, or a line of a
// file (a line may hold a secret): messages name files, sections, keys and
// environment variables. Empty strings in files and environment variables
// count as unset, as in boto3 and the reference; only the explicit
// credential pair gives "" a meaning (anonymous).
//
// The INI reader is our own: the two dialects involved (s3cmd's flat
// [default] and botocore's nested `s3 =` sub-sections) are each a few rules,
// and no well-kept C++ INI library parses botocore's nesting.
#include "storage/s3_config.h"

#include <fcntl.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <initializer_list>
#include <string_view>
#include <utility>

#include "storage/parsed_uri.h"

extern char** environ;

namespace tensorizer::s3 {
namespace {

std::string Trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return std::string(s.substr(b, e - b));
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

bool EndsWith(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// --- INI files ---------------------------------------------------------------

// Section name -> key (lowercased) -> value. A nested sub-section
// ("s3 =" followed by indented "key = value" lines) is flattened to
// "s3.key".
using IniSection = std::map<std::string, std::string>;

struct IniFile {
  std::string path;
  std::map<std::string, IniSection> sections;

  const IniSection* Find(const std::string& name) const {
    auto it = sections.find(name);
    return it == sections.end() ? nullptr : &it->second;
  }
};

size_t IndentOf(std::string_view line) {
  size_t n = 0;
  while (n < line.size() && (line[n] == ' ' || line[n] == '\t')) ++n;
  return n;
}

// Splits "key = value" or "key: value" at the first delimiter (as Python's
// configparser does). Returns false when there is none or the key is empty.
bool SplitKeyValue(std::string_view line, std::string* key, std::string* value) {
  const size_t pos = line.find_first_of("=:");
  if (pos == std::string_view::npos) return false;
  *key = Lower(Trim(line.substr(0, pos)));
  *value = Trim(line.substr(pos + 1));
  return !key->empty();
}

// The rules: "[name]" opens a section; full-line comments start with '#' or
// ';' (there are no inline comments: a secret may contain either character);
// a line indented deeper than the key before it continues that key's value,
// and when that value was empty the continuation lines are themselves
// "key = value" pairs of a nested sub-section. Errors name the file and the
// line number, never the line.
Result<IniFile> ParseIni(std::string_view text, const std::string& path) {
  IniFile ini;
  ini.path = path;
  if (text.substr(0, 3) == "\xEF\xBB\xBF") text.remove_prefix(3);  // UTF-8 BOM
  IniSection* section = nullptr;
  std::string last_key;  // key that indented lines continue, "" for none
  size_t last_indent = 0;
  bool nested = false;  // last_key's value was empty: a sub-section follows
  size_t line_no = 0;
  auto error = [&](const std::string& what) {
    return Status::InvalidArgument(path + " line " + std::to_string(line_no) + ": " + what);
  };
  while (!text.empty()) {
    const size_t eol = text.find('\n');
    std::string_view line = text.substr(0, eol);
    text.remove_prefix(eol == std::string_view::npos ? text.size() : eol + 1);
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    const std::string trimmed = Trim(line);
    if (trimmed.empty() || trimmed[0] == '#' || trimmed[0] == ';') continue;
    const size_t indent = IndentOf(line);
    if (section != nullptr && !last_key.empty() && indent > last_indent) {
      if (nested) {
        std::string key, value;
        if (!SplitKeyValue(trimmed, &key, &value)) {
          return error("expected 'key = value' in the '" + last_key + "' sub-section");
        }
        (*section)[last_key + "." + key] = value;
      } else {
        (*section)[last_key] += "\n" + trimmed;
      }
      continue;
    }
    if (trimmed[0] == '[') {
      if (trimmed.back() != ']') return error("section header without a closing ']'");
      section = &ini.sections[Trim(std::string_view(trimmed).substr(1, trimmed.size() - 2))];
      last_key.clear();
      continue;
    }
    if (section == nullptr) return error("a setting before any [section] header");
    std::string key, value;
    if (!SplitKeyValue(trimmed, &key, &value)) return error("expected 'key = value'");
    (*section)[key] = value;
    last_key = key;
    last_indent = indent;
    nested = value.empty();
  }
  return ini;
}

std::string ExpandHome(const std::string& path, const Environment& env) {
  if (env.home.empty()) return path;
  if (path == "~") return env.home;
  if (path.size() >= 2 && path[0] == '~' && path[1] == '/') return env.home + path.substr(1);
  return path;
}

// Reads and parses `path`; nullopt when the file does not exist.
Result<std::optional<IniFile>> LoadIni(const std::string& path, const Environment& env) {
  if (!env.read_file) return Status::InvalidArgument("s3 config: Environment has no read_file");
  auto text = env.read_file(path);
  if (!text.ok()) return text.status().WithContext("reading " + path);
  if (!text->has_value()) return std::optional<IniFile>();
  TZR_ASSIGN_OR_RETURN(IniFile ini, ParseIni(**text, path));
  return std::optional<IniFile>(std::move(ini));
}

// A value from an INI section; nullopt when missing or empty.
std::optional<std::string> Get(const IniSection* section, const std::string& key) {
  if (section == nullptr) return std::nullopt;
  auto it = section->find(key);
  if (it == section->end() || it->second.empty()) return std::nullopt;
  return it->second;
}

// The settings read from `section` must each be one line. A value that goes
// on over indented lines is refused, neither used nor echoed: those lines
// are most likely the next settings indented by mistake, a secret among
// them, and the value would otherwise reach a message, a Host header or a
// signature. The message names the file, section and key, never the text.
Status CheckOneLine(const IniSection* section, const std::string& where,
                    std::initializer_list<const char*> keys) {
  if (section == nullptr) return Status::Ok();
  for (const char* key : keys) {
    auto it = section->find(key);
    if (it != section->end() && it->second.find('\n') != std::string::npos) {
      return Status::InvalidArgument(where + " " + key +
                                     ": the value goes on over an indented line; a setting takes "
                                     "one line (is the line after it indented by mistake?)");
    }
  }
  return Status::Ok();
}

std::optional<std::string> GetEnv(const Environment& env, const std::string& name) {
  auto it = env.vars.find(name);
  if (it == env.vars.end() || it->second.empty()) return std::nullopt;
  return it->second;
}

// s3cmd's booleans, case-insensitively; nullopt for an empty value.
Result<std::optional<bool>> ParseBool(const std::string& value, const std::string& where) {
  const std::string v = Lower(value);
  if (v.empty()) return std::optional<bool>();
  if (v == "true" || v == "yes" || v == "on" || v == "1") return std::optional<bool>(true);
  if (v == "false" || v == "no" || v == "off" || v == "0") return std::optional<bool>(false);
  return Status::InvalidArgument(where + ": expected True or False, got '" + value + "'");
}

// --- the three sources of settings ------------------------------------------

// What ResolveConfig uses from an s3cmd config file.
struct S3cmdConfig {
  std::string path;
  std::optional<std::string> access_key, secret_key, access_token;
  std::optional<std::string> host_base, bucket_location;
  std::optional<bool> use_https;
};

Result<std::optional<S3cmdConfig>> LoadS3cmdConfig(const S3Options& options,
                                                   const Environment& env) {
  std::string path;
  if (options.s3cfg_path.has_value()) {
    path = ExpandHome(*options.s3cfg_path, env);
  } else if (!env.home.empty()) {
    path = env.home + "/.s3cfg";
  } else {
    return std::optional<S3cmdConfig>();
  }
  TZR_ASSIGN_OR_RETURN(std::optional<IniFile> ini, LoadIni(path, env));
  if (!ini.has_value()) {
    if (!options.s3cfg_path.has_value()) return std::optional<S3cmdConfig>();
    return Status(StatusCode::kInvalidArgument, "s3cfg_path does not exist: " + path, ENOENT);
  }
  const IniSection* section = ini->Find("default");
  if (section == nullptr) {
    return Status::InvalidArgument(path + ": no [default] section (not an s3cmd config file?)");
  }
  TZR_RETURN_IF_ERROR(CheckOneLine(
      section, path + " [default]",
      {"access_key", "secret_key", "access_token", "host_base", "bucket_location", "use_https"}));
  S3cmdConfig cfg;
  cfg.path = path;
  cfg.access_key = Get(section, "access_key");
  cfg.secret_key = Get(section, "secret_key");
  cfg.access_token = Get(section, "access_token");
  cfg.host_base = Get(section, "host_base");
  cfg.bucket_location = Get(section, "bucket_location");
  if (auto v = Get(section, "use_https")) {
    TZR_ASSIGN_OR_RETURN(cfg.use_https, ParseBool(*v, path + " [default] use_https"));
  }
  return std::optional<S3cmdConfig>(std::move(cfg));
}

// The selected profile in the AWS shared credentials and config files.
struct AwsProfile {
  std::string name;
  std::string named_by;  // "S3Options::profile", "AWS_PROFILE" or "" (the default)
  std::string credentials_path, config_path;
  const IniSection* credentials = nullptr;  // [name] in the credentials file
  const IniSection* config = nullptr;       // [profile name] (or [default]) in the config file
  std::optional<IniFile> credentials_file, config_file;

  // A profile the user named must exist somewhere; "default" need not.
  Status CheckFound() const {
    if (named_by.empty() || credentials != nullptr || config != nullptr) return Status::Ok();
    return Status::InvalidArgument("AWS profile '" + name + "' (from " + named_by +
                                   ") is in neither " + credentials_path + " nor " + config_path);
  }
  std::string ConfigWhere() const { return config_path + " [profile " + name + "]"; }
};

Result<std::unique_ptr<AwsProfile>> LoadAwsProfile(const S3Options& options,
                                                   const Environment& env) {
  auto p = std::make_unique<AwsProfile>();
  if (options.profile.has_value() && !options.profile->empty()) {
    p->name = *options.profile;
    p->named_by = "S3Options::profile";
  } else if (auto v = GetEnv(env, "AWS_PROFILE")) {
    p->name = *v;
    p->named_by = "AWS_PROFILE";
  } else {
    p->name = "default";
  }
  const std::string aws_dir = env.home.empty() ? std::string() : env.home + "/.aws/";
  auto path_of = [&](const char* var, const char* file) -> std::string {
    if (auto v = GetEnv(env, var)) return ExpandHome(*v, env);
    return aws_dir.empty() ? std::string() : aws_dir + file;
  };
  p->credentials_path = path_of("AWS_SHARED_CREDENTIALS_FILE", "credentials");
  p->config_path = path_of("AWS_CONFIG_FILE", "config");
  if (!p->credentials_path.empty()) {
    TZR_ASSIGN_OR_RETURN(p->credentials_file, LoadIni(p->credentials_path, env));
  }
  if (!p->config_path.empty()) {
    TZR_ASSIGN_OR_RETURN(p->config_file, LoadIni(p->config_path, env));
  }
  if (p->credentials_file) p->credentials = p->credentials_file->Find(p->name);
  if (p->config_file) {
    p->config = p->config_file->Find("profile " + p->name);
    if (p->config == nullptr && p->name == "default") p->config = p->config_file->Find("default");
  }
  TZR_RETURN_IF_ERROR(
      CheckOneLine(p->credentials, p->credentials_path + " [profile " + p->name + "]",
                   {"aws_access_key_id", "aws_secret_access_key", "aws_session_token"}));
  TZR_RETURN_IF_ERROR(
      CheckOneLine(p->config, p->ConfigWhere(),
                   {"aws_access_key_id", "aws_secret_access_key", "aws_session_token", "region",
                    "endpoint_url", "s3.endpoint_url", "s3.addressing_style"}));
  return p;
}

// --- credentials ---------------------------------------------------------------

struct CredentialResult {
  std::optional<Credentials> credentials;
  std::string from;
};

// Both halves from one source, or neither; half a pair is an error naming
// the half that is missing.
Result<std::optional<Credentials>> Pair(std::optional<std::string> id,
                                        std::optional<std::string> secret,
                                        std::optional<std::string> token, const std::string& where,
                                        const char* id_name, const char* secret_name) {
  if (!id && !secret) return std::optional<Credentials>();
  if (!id || !secret) {
    return Status::InvalidArgument(where + " has " + (id ? id_name : secret_name) + " but no " +
                                   (id ? secret_name : id_name));
  }
  return std::optional<Credentials>(Credentials{*id, *secret, token});
}

Result<CredentialResult> ResolveCredentials(const S3Options& o, const Environment& env,
                                            const std::optional<S3cmdConfig>& s3cfg,
                                            const AwsProfile& profile) {
  const auto& id = o.access_key_id;
  const auto& secret = o.secret_access_key;
  const bool token_given = o.session_token.has_value() && !o.session_token->empty();
  if (id && secret) {
    if (id->empty() && secret->empty()) {
      if (token_given) {
        return Status::InvalidArgument(
            "session_token was given with empty (anonymous) access_key_id and "
            "secret_access_key");
      }
      return CredentialResult{std::nullopt, "explicit arguments (anonymous)"};
    }
    if (id->empty() || secret->empty()) {
      return Status::InvalidArgument(
          std::string(id->empty() ? "access_key_id" : "secret_access_key") +
          " is empty but the other half of the pair is not; pass both "
          "as \"\" for anonymous access");
    }
    return CredentialResult{Credentials{*id, *secret, token_given ? o.session_token : std::nullopt},
                            "explicit arguments"};
  }
  if (id || secret) {
    // Half an explicit pair: the other half comes from the s3cmd config, as
    // in the reference. Nothing else may complete it (mixing sources).
    const char* missing = id ? "secret_access_key" : "access_key_id";
    const char* key = id ? "secret_key" : "access_key";
    if (!s3cfg) {
      return Status::InvalidArgument(
          std::string("only ") + (id ? "access_key_id" : "secret_access_key") +
          " was given, and there is no s3cmd config to take " + missing + " from");
    }
    const auto& found = id ? s3cfg->secret_key : s3cfg->access_key;
    if (!found) {
      return Status::InvalidArgument(std::string(missing) + " was not given and " + s3cfg->path +
                                     " has no " + key);
    }
    Credentials c{id ? *id : *found, id ? *found : *secret, std::nullopt};
    if (c.access_key_id.empty() || c.secret_access_key.empty()) {
      return Status::InvalidArgument(std::string(id ? "access_key_id" : "secret_access_key") +
                                     " is empty; pass both as \"\" for anonymous access");
    }
    if (token_given) c.session_token = o.session_token;
    return CredentialResult{std::move(c), "explicit arguments and " + s3cfg->path};
  }
  if (token_given) {
    return Status::InvalidArgument(
        "session_token was given without access_key_id and secret_access_key");
  }
  if (s3cfg) {
    TZR_ASSIGN_OR_RETURN(auto c, Pair(s3cfg->access_key, s3cfg->secret_key, s3cfg->access_token,
                                      s3cfg->path + " [default]", "access_key", "secret_key"));
    if (c) return CredentialResult{std::move(c), s3cfg->path};
  }
  {
    TZR_ASSIGN_OR_RETURN(
        auto c, Pair(GetEnv(env, "AWS_ACCESS_KEY_ID"), GetEnv(env, "AWS_SECRET_ACCESS_KEY"),
                     GetEnv(env, "AWS_SESSION_TOKEN"), "the environment", "AWS_ACCESS_KEY_ID",
                     "AWS_SECRET_ACCESS_KEY"));
    if (c) return CredentialResult{std::move(c), "environment"};
  }
  TZR_RETURN_IF_ERROR(profile.CheckFound());
  const std::pair<const IniSection*, const std::string*> files[] = {
      {profile.credentials, &profile.credentials_path}, {profile.config, &profile.config_path}};
  for (const auto& [section, path] : files) {
    const std::string where = *path + " [profile " + profile.name + "]";
    TZR_ASSIGN_OR_RETURN(
        auto c, Pair(Get(section, "aws_access_key_id"), Get(section, "aws_secret_access_key"),
                     Get(section, "aws_session_token"), where, "aws_access_key_id",
                     "aws_secret_access_key"));
    if (c) return CredentialResult{std::move(c), where};
  }
  return CredentialResult{std::nullopt, "none (anonymous)"};
}

// --- endpoint -----------------------------------------------------------------

struct Endpoint {
  std::optional<std::string> scheme;  // "http" / "https" when the endpoint gave one
  std::string host;                   // lowercased; IPv6 literals keep their brackets
  std::optional<std::string> port;
};

// host | host:port | http(s)://host[:port][/]; `where` names the source.
Result<Endpoint> ParseEndpoint(const std::string& raw, const std::string& where) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("endpoint from " + where + ": " + why);
  };
  Endpoint ep;
  std::string_view rest = raw;
  if (const size_t sep = rest.find("://"); sep != std::string_view::npos) {
    const std::string scheme = Lower(rest.substr(0, sep));
    if (scheme != "http" && scheme != "https") {
      return bad("scheme '" + scheme + "' is not http or https");
    }
    ep.scheme = scheme;
    rest.remove_prefix(sep + 3);
  }
  // Checked before anything is echoed: user:password@ would be a secret, and
  // a query string may hold a token.
  if (rest.find('@') != std::string_view::npos) {
    return bad("user information (user@host) is not supported; pass credentials separately");
  }
  if (const size_t q = rest.find_first_of("?#"); q != std::string_view::npos) {
    return bad("has a query string or fragment; give only [scheme://]host[:port]");
  }
  if (const size_t slash = rest.find('/'); slash != std::string_view::npos) {
    if (slash + 1 != rest.size()) {
      return bad("'" + raw + "' has a path; give only [scheme://]host[:port]");
    }
    rest.remove_suffix(1);
  }
  // An empty port ("minio:") is a typo here, though a URI may have one.
  if (!rest.empty() && rest.back() == ':') return bad("'" + raw + "' has an empty port");
  Result<internal::HostPort> hp = internal::ParseHostPort(rest);
  if (!hp.ok()) return bad("'" + raw + "' " + hp.status().message());
  const std::string host = hp->UrlHost();
  for (char c : host) {
    const auto u = static_cast<unsigned char>(c);
    if (!(std::isalnum(u) || c == '.' || c == '-' || c == '_' || c == '[' || c == ']' ||
          (c == ':' && hp->ipv6))) {
      return bad("'" + raw + "' is not a host name");
    }
  }
  if (hp->port) ep.port = std::to_string(*hp->port);
  ep.host = Lower(host);
  return ep;
}

// "s3.eu-west-1.amazonaws.com", "s3-eu-west-1.amazonaws.com" and
// "s3.dualstack.eu-west-1.amazonaws.com" name their region; signing with any
// other region fails, so an AWS endpoint without a configured region signs
// for its own.
std::optional<std::string> RegionOfAwsHost(const std::string& host) {
  constexpr std::string_view kSuffix = ".amazonaws.com";
  if (!EndsWith(host, kSuffix)) return std::nullopt;
  std::string_view label = std::string_view(host).substr(0, host.size() - kSuffix.size());
  if (label.substr(0, 13) == "s3.dualstack.") {
    label.remove_prefix(13);
  } else if (label.substr(0, 3) == "s3." || label.substr(0, 3) == "s3-") {
    label.remove_prefix(3);
  } else {
    return std::nullopt;
  }
  if (label.empty() || label.find('.') != std::string_view::npos) return std::nullopt;
  return std::string(label);
}

// A bucket name that can be one DNS label of a virtual host: lowercase
// letters, digits, '-' and '.', starting and ending alphanumeric. Legacy
// us-east-1 buckets with capitals or '_' only work path-style.
bool IsDnsCompatibleBucket(const std::string& bucket) {
  if (bucket.size() < 3 || bucket.size() > 63) return false;
  for (char c : bucket) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return false;
  }
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  return alnum(bucket.front()) && alnum(bucket.back());
}

}  // namespace

// --- public API ---------------------------------------------------------------

Environment Environment::FromProcess() {
  Environment env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view kv(*e);
    const size_t eq = kv.find('=');
    if (eq == std::string_view::npos) continue;
    env.vars.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
  }
  if (const char* home = std::getenv("HOME")) env.home = home;
  env.read_file = [](const std::string& path) -> Result<std::optional<std::string>> {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      // ENOTDIR: a component of the path is a file, so this path cannot exist.
      if (errno == ENOENT || errno == ENOTDIR) return std::optional<std::string>();
      return Status::FromErrno("opening " + path, errno);
    }
    std::string data;
    char buf[16384];
    for (;;) {
      const ssize_t n = ::read(fd, buf, sizeof buf);
      if (n > 0) {
        data.append(buf, static_cast<size_t>(n));
      } else if (n == 0) {
        break;
      } else if (errno != EINTR) {
        const int err = errno;
        ::close(fd);
        return Status::FromErrno("reading " + path, err);
      }
    }
    ::close(fd);
    return std::optional<std::string>(std::move(data));
  };
  return env;
}

Result<Location> ParseS3Uri(const std::string& uri) {
  constexpr std::string_view kScheme = "s3://";
  if (uri.size() < kScheme.size() || Lower(std::string_view(uri).substr(0, 5)) != kScheme) {
    return Status::InvalidArgument("not an s3:// URI: " + uri);
  }
  const std::string_view rest = std::string_view(uri).substr(kScheme.size());
  const size_t slash = rest.find('/');
  Location loc;
  loc.bucket = std::string(rest.substr(0, slash));
  if (loc.bucket.empty()) return Status::InvalidArgument("S3 URI has no bucket: " + uri);
  for (char c : loc.bucket) {
    const auto u = static_cast<unsigned char>(c);
    if (!(std::isalnum(u) || c == '.' || c == '-' || c == '_')) {
      return Status::InvalidArgument("S3 URI has an invalid bucket name: " + uri);
    }
  }
  if (slash != std::string_view::npos) {
    // Leading slashes are dropped ("s3://b//k" is key "k"), as the reference
    // does, so both name the same object. '?' and '#' are part of the key, as
    // in the AWS CLI: an s3:// URI has no query.
    std::string_view key = rest.substr(slash);
    while (!key.empty() && key.front() == '/') key.remove_prefix(1);
    loc.key = std::string(key);
  }
  if (loc.key.empty()) return Status::InvalidArgument("S3 URI has no object key: " + uri);
  return loc;
}

bool ResolvedConfig::VirtualHostedFor(const Location& loc) const {
  if (!virtual_hosted) return false;
  if (!path_style_fallback) return true;
  // A dotted bucket as a subdomain does not match the wildcard certificate.
  if (scheme == "https" && loc.bucket.find('.') != std::string::npos) return false;
  return IsDnsCompatibleBucket(loc.bucket);
}

std::string ResolvedConfig::RequestHost(const Location& loc) const {
  return VirtualHostedFor(loc) ? loc.bucket + "." + host : host;
}

std::string ResolvedConfig::RequestPath(const Location& loc) const {
  return VirtualHostedFor(loc) ? "/" + loc.key : "/" + loc.bucket + "/" + loc.key;
}

std::string ResolvedConfig::ObjectUrl(const Location& loc) const {
  return scheme + "://" + RequestHost(loc) + UriEncode(RequestPath(loc), /*keep_slash=*/true);
}

Result<ResolvedConfig> ResolveConfig(const S3Options& options, const Environment& env) {
  TZR_ASSIGN_OR_RETURN(std::optional<S3cmdConfig> s3cfg, LoadS3cmdConfig(options, env));
  TZR_ASSIGN_OR_RETURN(std::unique_ptr<AwsProfile> profile, LoadAwsProfile(options, env));
  ResolvedConfig out;

  TZR_ASSIGN_OR_RETURN(CredentialResult creds, ResolveCredentials(options, env, s3cfg, *profile));
  out.credentials = std::move(creds.credentials);
  out.credentials_from = std::move(creds.from);

  // Endpoint (parsed now; the AWS default waits for the region).
  std::optional<Endpoint> endpoint;
  {
    std::optional<std::string> raw;
    std::string where;
    if (options.endpoint.has_value() && !options.endpoint->empty()) {
      raw = options.endpoint;
      where = "S3Options::endpoint";
    } else if (s3cfg && s3cfg->host_base) {
      raw = s3cfg->host_base;
      where = s3cfg->path + " [default] host_base";
    } else if ((raw = GetEnv(env, "AWS_ENDPOINT_URL_S3"))) {
      where = "AWS_ENDPOINT_URL_S3";
    } else if ((raw = GetEnv(env, "AWS_ENDPOINT_URL"))) {
      where = "AWS_ENDPOINT_URL";
    } else {
      TZR_RETURN_IF_ERROR(profile->CheckFound());
      if ((raw = Get(profile->config, "s3.endpoint_url"))) {
        where = profile->ConfigWhere() + " s3.endpoint_url";
      } else if ((raw = Get(profile->config, "endpoint_url"))) {
        where = profile->ConfigWhere() + " endpoint_url";
      }
    }
    if (raw) {
      TZR_ASSIGN_OR_RETURN(Endpoint ep, ParseEndpoint(*raw, where));
      endpoint = std::move(ep);
    }
  }

  // Region.
  if (options.region.has_value() && !options.region->empty()) {
    out.region = *options.region;
  } else if (auto r = GetEnv(env, "AWS_REGION")) {
    out.region = *r;
  } else if (auto r2 = GetEnv(env, "AWS_DEFAULT_REGION")) {
    out.region = *r2;
  } else {
    TZR_RETURN_IF_ERROR(profile->CheckFound());
    if (auto r3 = Get(profile->config, "region")) {
      out.region = *r3;
    } else if (s3cfg && s3cfg->bucket_location && Lower(*s3cfg->bucket_location) != "us") {
      out.region = *s3cfg->bucket_location;
    } else if (auto r4 = endpoint ? RegionOfAwsHost(endpoint->host) : std::nullopt) {
      out.region = *r4;
    } else {
      out.region = "us-east-1";
    }
  }

  if (!endpoint) {
    // The regional form for us-east-1 too: one shape for every region, and
    // the host always names the region it is signed for.
    endpoint = Endpoint{std::nullopt, "s3." + out.region + ".amazonaws.com", std::nullopt};
  }

  // Scheme: the endpoint's own; else force_http; else s3cmd's use_https.
  if (endpoint->scheme) {
    out.scheme = *endpoint->scheme;
  } else if (options.force_http.has_value()) {
    out.scheme = *options.force_http ? "http" : "https";
  } else if (s3cfg && s3cfg->use_https.has_value()) {
    out.scheme = *s3cfg->use_https ? "https" : "http";
  } else {
    out.scheme = "https";
  }
  out.host = endpoint->host;
  // The default port is left out, as curl leaves it out of the Host header
  // it sends: the signed host must match.
  if (endpoint->port && !((out.scheme == "https" && *endpoint->port == "443") ||
                          (out.scheme == "http" && *endpoint->port == "80"))) {
    out.host += ":" + *endpoint->port;
  }

  // Addressing.
  S3Options::Addressing addressing = options.addressing;
  if (addressing == S3Options::Addressing::kAuto) {
    TZR_RETURN_IF_ERROR(profile->CheckFound());
    if (auto style = Get(profile->config, "s3.addressing_style")) {
      const std::string s = Lower(*style);
      if (s == "path") {
        addressing = S3Options::Addressing::kPath;
      } else if (s == "virtual") {
        addressing = S3Options::Addressing::kVirtual;
      } else if (s != "auto") {
        return Status::InvalidArgument(profile->ConfigWhere() + " s3.addressing_style: '" + *style +
                                       "' is not auto, path or virtual");
      }
    }
  }
  switch (addressing) {
    case S3Options::Addressing::kPath:
      out.virtual_hosted = false;
      break;
    case S3Options::Addressing::kVirtual:
      out.virtual_hosted = true;
      break;
    case S3Options::Addressing::kAuto: {
      const std::string& h = endpoint->host;
      if (h == "amazonaws.com" || EndsWith(h, ".amazonaws.com")) {
        out.virtual_hosted = true;
        out.path_style_fallback = true;
      } else if (h == "cwobject.com" || h == "cwlota.com") {
        // CoreWeave AI Object Storage serves virtual-hosted requests only.
        out.virtual_hosted = true;
      }
      break;
    }
  }
  // Every value here ends up in a request header: a CR or LF in one would
  // add headers of its own. The message names the setting, never its value.
  auto clean = [](const std::string& v) {
    for (unsigned char c : v) {
      if (c < 0x20 || c == 0x7f) return false;
    }
    return true;
  };
  auto refuse = [](const std::string& what) {
    return Status::InvalidArgument("the S3 " + what +
                                   " contains a control character (CR, LF, NUL...); "
                                   "fix the setting it came from");
  };
  if (out.credentials) {
    const std::string from = " (from " + out.credentials_from + ")";
    if (!clean(out.credentials->access_key_id)) return refuse("access key id" + from);
    if (!clean(out.credentials->secret_access_key)) return refuse("secret access key" + from);
    if (out.credentials->session_token && !clean(*out.credentials->session_token)) {
      return refuse("session token" + from);
    }
  }
  if (!clean(out.region)) return refuse("region");
  if (!clean(out.host)) return refuse("endpoint");
  return out;
}

}  // namespace tensorizer::s3
