// S3 configuration resolution (storage/s3_config.h), table-driven.
//
// Every case runs against a pinned Environment: a map of variables, a home
// directory and an in-memory map of files, so no case depends on the machine.
// Each case states only what it is about (credentials, endpoint, region,
// addressing or an error); the builder below keeps the tables readable in
// C++17, which has no designated initializers.
//
// Secrets and tokens in the fixtures all contain "SECRETVALUE" or
// "TOKENVALUE", and every error message is checked not to contain either.
#include "storage/s3_config.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace tensorizer::s3 {
namespace {

const char kHome[] = "/home/u";
const char kS3cfg[] = "/home/u/.s3cfg";
const char kAwsCredentials[] = "/home/u/.aws/credentials";
const char kAwsConfig[] = "/home/u/.aws/config";

Environment PinnedEnvironment(std::map<std::string, std::string> vars,
                              std::map<std::string, std::string> files) {
  Environment env;
  env.vars = std::move(vars);
  env.home = kHome;
  env.read_file =
      [files = std::move(files)](const std::string& path) -> Result<std::optional<std::string>> {
    if (path == "/unreadable") return Status::IoError("reading /unreadable: EACCES", EACCES);
    auto it = files.find(path);
    if (it == files.end()) return std::optional<std::string>();
    return std::optional<std::string>(it->second);
  };
  return env;
}

std::string S3cfg(const std::string& access, const std::string& secret,
                  const std::string& extra = "") {
  return "[default]\naccess_key = " + access + "\nsecret_key = " + secret + "\n" + extra;
}

std::string AwsCredentials(const std::string& section, const std::string& id,
                           const std::string& secret, const std::string& extra = "") {
  return "[" + section + "]\naws_access_key_id = " + id + "\naws_secret_access_key = " + secret +
         "\n" + extra;
}

struct Case {
  std::string name;
  S3Options options;
  std::map<std::string, std::string> vars;
  std::map<std::string, std::string> files;

  // Expectations; unset ones are not checked.
  std::optional<std::string> error;  // a substring of the InvalidArgument message
  std::optional<int> error_errno;
  StatusCode error_code = StatusCode::kInvalidArgument;
  bool check_credentials = false;
  std::optional<Credentials> credentials;  // nullopt: anonymous
  std::optional<std::string> from;
  std::optional<std::string> scheme, host, region;
  // The request host and path for `bucket`/"k" (checks addressing).
  std::optional<std::string> bucket, request_host, request_path;

  Case(std::string n) : name(std::move(n)) {}  // NOLINT: tables read better
  Case& Opt(const std::function<void(S3Options&)>& f) {
    f(options);
    return *this;
  }
  Case& Env(const std::string& k, const std::string& v) {
    vars[k] = v;
    return *this;
  }
  Case& File(const std::string& path, const std::string& text) {
    files[path] = text;
    return *this;
  }
  Case& Error(const std::string& substring, std::optional<int> err = std::nullopt) {
    error = substring;
    error_errno = err;
    return *this;
  }
  Case& Code(StatusCode code) {
    error_code = code;
    return *this;
  }
  Case& Creds(const std::string& id, const std::string& secret,
              std::optional<std::string> token = std::nullopt) {
    check_credentials = true;
    credentials = Credentials{id, secret, std::move(token)};
    return *this;
  }
  Case& Anonymous() {
    check_credentials = true;
    credentials.reset();
    return *this;
  }
  Case& From(const std::string& f) {
    from = f;
    return *this;
  }
  Case& Scheme(const std::string& s) {
    scheme = s;
    return *this;
  }
  Case& Host(const std::string& h) {
    host = h;
    return *this;
  }
  Case& Region(const std::string& r) {
    region = r;
    return *this;
  }
  Case& Request(const std::string& b, const std::string& h, const std::string& p) {
    bucket = b;
    request_host = h;
    request_path = p;
    return *this;
  }
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.name; }

void RunCase(const Case& c) {
  const Environment env = PinnedEnvironment(c.vars, c.files);
  const Result<ResolvedConfig> r = ResolveConfig(c.options, env);
  if (c.error) {
    ASSERT_FALSE(r.ok()) << "expected an error containing: " << *c.error;
    EXPECT_EQ(r.status().code(), c.error_code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(*c.error), std::string::npos) << r.status().message();
    EXPECT_EQ(r.status().message().find("SECRETVALUE"), std::string::npos) << r.status().message();
    EXPECT_EQ(r.status().message().find("TOKENVALUE"), std::string::npos) << r.status().message();
    if (c.error_errno) EXPECT_EQ(r.status().sys_errno(), *c.error_errno);
    return;
  }
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  const ResolvedConfig& cfg = r.value();
  if (c.check_credentials) {
    ASSERT_EQ(cfg.credentials.has_value(), c.credentials.has_value()) << cfg.credentials_from;
    if (c.credentials) {
      EXPECT_EQ(cfg.credentials->access_key_id, c.credentials->access_key_id);
      EXPECT_EQ(cfg.credentials->secret_access_key, c.credentials->secret_access_key);
      EXPECT_EQ(cfg.credentials->session_token, c.credentials->session_token);
    }
  }
  if (c.from) EXPECT_EQ(cfg.credentials_from, *c.from);
  if (c.scheme) EXPECT_EQ(cfg.scheme, *c.scheme);
  if (c.host) EXPECT_EQ(cfg.host, *c.host);
  if (c.region) EXPECT_EQ(cfg.region, *c.region);
  if (c.bucket) {
    const Location loc{*c.bucket, "k"};
    EXPECT_EQ(cfg.RequestHost(loc), *c.request_host);
    EXPECT_EQ(cfg.RequestPath(loc), *c.request_path);
  }
}

std::string CaseName(const testing::TestParamInfo<Case>& info) { return info.param.name; }

// Explicit credentials, both halves.
void ExplicitPair(S3Options& o) {
  o.access_key_id = "AK_EXPLICIT";
  o.secret_access_key = "SECRETVALUE_explicit";
}

// A world where every credential source has something.
Case Everywhere(const std::string& name) {
  Case c(name);
  c.File(kS3cfg, S3cfg("AK_S3CFG", "SECRETVALUE_s3cfg"))
      .Env("AWS_ACCESS_KEY_ID", "AK_ENV")
      .Env("AWS_SECRET_ACCESS_KEY", "SECRETVALUE_env")
      .File(kAwsCredentials, AwsCredentials("default", "AK_CREDFILE", "SECRETVALUE_credfile"))
      .File(kAwsConfig, AwsCredentials("default", "AK_CONFIG", "SECRETVALUE_config"));
  return c;
}

// --- credentials --------------------------------------------------------------

class S3ConfigCredentials : public testing::TestWithParam<Case> {};
TEST_P(S3ConfigCredentials, Resolves) { RunCase(GetParam()); }

INSTANTIATE_TEST_SUITE_P(
    S3Config, S3ConfigCredentials,
    testing::Values(
        // Each step of the order, and each step over the next.
        Everywhere("ExplicitOverS3cfg")
            .Opt(ExplicitPair)
            .Creds("AK_EXPLICIT", "SECRETVALUE_explicit")
            .From("explicit arguments"),
        Everywhere("ExplicitWithSessionToken")
            .Opt(ExplicitPair)
            .Opt([](S3Options& o) { o.session_token = "TOKENVALUE_explicit"; })
            .Creds("AK_EXPLICIT", "SECRETVALUE_explicit", "TOKENVALUE_explicit"),
        Everywhere("ExplicitAnonymousOverEverything")
            .Opt([](S3Options& o) { o.access_key_id = o.secret_access_key = ""; })
            .Anonymous()
            .From("explicit arguments (anonymous)"),
        Everywhere("S3cfgOverEnvironment").Creds("AK_S3CFG", "SECRETVALUE_s3cfg").From(kS3cfg),
        Everywhere("EnvironmentOverCredentialsFile")
            .File(kS3cfg, "[default]\naccess_key =\nsecret_key =\nhost_base = minio:9000\n")
            .Creds("AK_ENV", "SECRETVALUE_env")
            .From("environment"),
        Everywhere("CredentialsFileOverConfigFile")
            .File(kS3cfg, "[default]\n")
            .Env("AWS_ACCESS_KEY_ID", "")
            .Env("AWS_SECRET_ACCESS_KEY", "")
            .Creds("AK_CREDFILE", "SECRETVALUE_credfile")
            .From("/home/u/.aws/credentials [profile default]"),
        Case("ConfigFileWhenCredentialsFileLacksProfile")
            .File(kAwsCredentials, AwsCredentials("other", "AK_OTHER", "SECRETVALUE_other"))
            .File(kAwsConfig, AwsCredentials("default", "AK_CONFIG", "SECRETVALUE_config"))
            .Creds("AK_CONFIG", "SECRETVALUE_config")
            .From("/home/u/.aws/config [profile default]"),
        Case("NoCredentialsAnywhereIsAnonymous").Anonymous().From("none (anonymous)"),
        Case("EmptyFilesAreAnonymous")
            .File(kS3cfg, "[default]\n")
            .File(kAwsCredentials, "")
            .File(kAwsConfig, "[default]\nregion = eu-west-1\n")
            .Anonymous()
            .From("none (anonymous)"),
        // Partial explicit pairs are completed from the s3cmd config only.
        Everywhere("PartialKeyIdCompletedFromS3cfg")
            .Opt([](S3Options& o) { o.access_key_id = "AK_EXPLICIT"; })
            .Creds("AK_EXPLICIT", "SECRETVALUE_s3cfg")
            .From("explicit arguments and /home/u/.s3cfg"),
        Everywhere("PartialSecretCompletedFromS3cfg")
            .Opt([](S3Options& o) { o.secret_access_key = "SECRETVALUE_explicit"; })
            .Creds("AK_S3CFG", "SECRETVALUE_explicit"),
        Everywhere("PartialPairKeepsExplicitSessionToken")
            .Opt([](S3Options& o) {
              o.access_key_id = "AK_EXPLICIT";
              o.session_token = "TOKENVALUE_x";
            })
            .Creds("AK_EXPLICIT", "SECRETVALUE_s3cfg", "TOKENVALUE_x"),
        Case("PartialPairWithoutS3cfgFails")
            .Env("AWS_ACCESS_KEY_ID", "AK_ENV")
            .Env("AWS_SECRET_ACCESS_KEY", "SECRETVALUE_env")
            .Opt([](S3Options& o) { o.access_key_id = "AK_EXPLICIT"; })
            .Error("only access_key_id was given"),
        Case("PartialPairS3cfgLacksTheOtherHalf")
            .File(kS3cfg, "[default]\naccess_key = AK_S3CFG\n")
            .Opt([](S3Options& o) { o.access_key_id = "AK_EXPLICIT"; })
            .Error("secret_access_key was not given and /home/u/.s3cfg has no secret_key"),
        Case("PartialPairEmptyKeyIdFails")
            .File(kS3cfg, S3cfg("AK_S3CFG", "SECRETVALUE_s3cfg"))
            .Opt([](S3Options& o) { o.access_key_id = ""; })
            .Error("access_key_id is empty"),
        Case("ExplicitHalfEmptyPairFails")
            .Opt([](S3Options& o) {
              o.access_key_id = "";
              o.secret_access_key = "SECRETVALUE_x";
            })
            .Error("access_key_id is empty"),
        Case("SessionTokenWithAnonymousFails")
            .Opt([](S3Options& o) {
              o.access_key_id = o.secret_access_key = "";
              o.session_token = "TOKENVALUE_x";
            })
            .Error("session_token was given with empty"),
        Case("SessionTokenAloneFails")
            .Opt([](S3Options& o) { o.session_token = "TOKENVALUE_x"; })
            .Error("session_token was given without"),
        // Half a pair in any one source is an error naming the missing half.
        Case("S3cfgHalfPairFails")
            .File(kS3cfg, "[default]\nsecret_key = SECRETVALUE_s3cfg\n")
            .Error("/home/u/.s3cfg [default] has secret_key but no access_key"),
        Case("EnvironmentHalfPairFails")
            .Env("AWS_ACCESS_KEY_ID", "AK_ENV")
            .Error("has AWS_ACCESS_KEY_ID but no AWS_SECRET_ACCESS_KEY"),
        Case("CredentialsFileHalfPairFails")
            .File(kAwsCredentials, "[default]\naws_access_key_id = AK\n")
            .Error("/home/u/.aws/credentials [profile default] has aws_access_key_id but no "
                   "aws_secret_access_key"),
        // Session tokens from each source.
        Case("SessionTokenFromEnvironment")
            .Env("AWS_ACCESS_KEY_ID", "AK_ENV")
            .Env("AWS_SECRET_ACCESS_KEY", "SECRETVALUE_env")
            .Env("AWS_SESSION_TOKEN", "TOKENVALUE_env")
            .Creds("AK_ENV", "SECRETVALUE_env", "TOKENVALUE_env"),
        Case("SessionTokenFromCredentialsFile")
            .File(kAwsCredentials, AwsCredentials("default", "AK_CREDFILE", "SECRETVALUE_credfile",
                                                  "aws_session_token = TOKENVALUE_credfile\n"))
            .Creds("AK_CREDFILE", "SECRETVALUE_credfile", "TOKENVALUE_credfile"),
        Case("SessionTokenFromS3cfgAccessToken")
            .File(kS3cfg,
                  S3cfg("AK_S3CFG", "SECRETVALUE_s3cfg", "access_token = TOKENVALUE_s3cfg\n"))
            .Creds("AK_S3CFG", "SECRETVALUE_s3cfg", "TOKENVALUE_s3cfg"),
        Case("EnvironmentSessionTokenNotMixedIntoS3cfg")
            .File(kS3cfg, S3cfg("AK_S3CFG", "SECRETVALUE_s3cfg"))
            .Env("AWS_SESSION_TOKEN", "TOKENVALUE_env")
            .Creds("AK_S3CFG", "SECRETVALUE_s3cfg"),
        // s3cmd config location.
        Case("ExplicitS3cfgPathInsteadOfHome")
            .File(kS3cfg, S3cfg("AK_HOME", "SECRETVALUE_home"))
            .File("/etc/s3cfg", S3cfg("AK_ETC", "SECRETVALUE_etc"))
            .Opt([](S3Options& o) { o.s3cfg_path = "/etc/s3cfg"; })
            .Creds("AK_ETC", "SECRETVALUE_etc")
            .From("/etc/s3cfg"),
        Case("ExplicitS3cfgPathWithTilde")
            .File("/home/u/cfg/s3", S3cfg("AK_T", "SECRETVALUE_t"))
            .Opt([](S3Options& o) { o.s3cfg_path = "~/cfg/s3"; })
            .Creds("AK_T", "SECRETVALUE_t")
            .From("/home/u/cfg/s3"),
        Case("ExplicitS3cfgPathMissingIsENOENT")
            .File(kS3cfg, S3cfg("AK_HOME", "SECRETVALUE_home"))
            .Opt([](S3Options& o) { o.s3cfg_path = "/nope/s3cfg"; })
            .Error("s3cfg_path does not exist: /nope/s3cfg", ENOENT),
        Case("ExplicitS3cfgPathMissingEvenWithExplicitCredentials")
            .Opt(ExplicitPair)
            .Opt([](S3Options& o) { o.s3cfg_path = "/nope/s3cfg"; })
            .Error("/nope/s3cfg", ENOENT),
        Case("S3cfgWithoutDefaultSectionFails")
            .File(kS3cfg, "[other]\naccess_key = AK\n")
            .Error("/home/u/.s3cfg: no [default] section"),
        Case("UnreadableFileFails")
            .Opt([](S3Options& o) { o.s3cfg_path = "/unreadable"; })
            .Error("reading /unreadable")
            .Code(StatusCode::kIoError),
        // Profiles.
        Case("AwsProfileSelectsCredentialsSection")
            .Env("AWS_PROFILE", "dev")
            .File(kAwsCredentials, AwsCredentials("default", "AK_DEFAULT", "SECRETVALUE_d") +
                                       AwsCredentials("dev", "AK_DEV", "SECRETVALUE_dev"))
            .Creds("AK_DEV", "SECRETVALUE_dev")
            .From("/home/u/.aws/credentials [profile dev]"),
        Case("AwsProfileSelectsConfigProfileSection")
            .Env("AWS_PROFILE", "dev")
            .File(kAwsConfig, AwsCredentials("default", "AK_DEFAULT", "SECRETVALUE_d") +
                                  AwsCredentials("profile dev", "AK_DEV", "SECRETVALUE_dev") +
                                  AwsCredentials("dev", "AK_NOT_A_PROFILE", "SECRETVALUE_n"))
            .Creds("AK_DEV", "SECRETVALUE_dev")
            .From("/home/u/.aws/config [profile dev]"),
        Case("ConfigProfileDefaultSectionName")
            .File(kAwsConfig, AwsCredentials("profile default", "AK_PD", "SECRETVALUE_pd"))
            .Creds("AK_PD", "SECRETVALUE_pd"),
        Case("ExplicitProfileOverAwsProfile")
            .Env("AWS_PROFILE", "dev")
            .Opt([](S3Options& o) { o.profile = "prod"; })
            .File(kAwsCredentials, AwsCredentials("dev", "AK_DEV", "SECRETVALUE_dev") +
                                       AwsCredentials("prod", "AK_PROD", "SECRETVALUE_prod"))
            .Creds("AK_PROD", "SECRETVALUE_prod")
            .From("/home/u/.aws/credentials [profile prod]"),
        Case("NamedProfileMissingFails")
            .Env("AWS_PROFILE", "ghost")
            .File(kAwsCredentials, AwsCredentials("default", "AK", "SECRETVALUE_d"))
            .Error("AWS profile 'ghost' (from AWS_PROFILE) is in neither "
                   "/home/u/.aws/credentials nor /home/u/.aws/config"),
        Case("ExplicitProfileMissingFails")
            .Opt([](S3Options& o) { o.profile = "ghost"; })
            .Error("(from S3Options::profile)"),
        Case("NamedProfileMissingIgnoredWhenNeverConsulted")
            .Env("AWS_PROFILE", "ghost")
            .Opt(ExplicitPair)
            .Opt([](S3Options& o) {
              o.endpoint = "minio:9000";
              o.region = "r";
              o.addressing = S3Options::Addressing::kPath;
            })
            .Creds("AK_EXPLICIT", "SECRETVALUE_explicit"),
        // File location overrides.
        Case("SharedCredentialsFileOverride")
            .Env("AWS_SHARED_CREDENTIALS_FILE", "/etc/aws/creds")
            .File(kAwsCredentials, AwsCredentials("default", "AK_HOME", "SECRETVALUE_h"))
            .File("/etc/aws/creds", AwsCredentials("default", "AK_ETC", "SECRETVALUE_e"))
            .Creds("AK_ETC", "SECRETVALUE_e")
            .From("/etc/aws/creds [profile default]"),
        Case("ConfigFileOverride")
            .Env("AWS_CONFIG_FILE", "~/alt/config")
            .File(kAwsConfig, AwsCredentials("default", "AK_HOME", "SECRETVALUE_h"))
            .File("/home/u/alt/config", AwsCredentials("default", "AK_ALT", "SECRETVALUE_a"))
            .Creds("AK_ALT", "SECRETVALUE_a")
            .From("/home/u/alt/config [profile default]"),
        Case("MalformedCredentialsFileNamesLine")
            .File(kAwsCredentials, "[default]\naws_access_key_id AK SECRETVALUE_x\n")
            .Error("/home/u/.aws/credentials line 2: expected 'key = value'")),
    CaseName);

// --- endpoint and scheme ------------------------------------------------------

class S3ConfigEndpoint : public testing::TestWithParam<Case> {};
TEST_P(S3ConfigEndpoint, Resolves) { RunCase(GetParam()); }

// Every endpoint source populated: explicit, s3cfg, both variables, both
// config-file keys.
Case AllEndpoints(const std::string& name) {
  Case c(name);
  c.Opt([](S3Options& o) { o.endpoint = "explicit.example"; })
      .File(kS3cfg, "[default]\nhost_base = s3cfg.example\n")
      .Env("AWS_ENDPOINT_URL_S3", "https://env-s3.example")
      .Env("AWS_ENDPOINT_URL", "https://env.example")
      .File(kAwsConfig,
            "[default]\nendpoint_url = https://profile.example\n"
            "s3 =\n  endpoint_url = https://profile-s3.example\n");
  return c;
}

void NoExplicitEndpoint(S3Options& o) { o.endpoint.reset(); }

INSTANTIATE_TEST_SUITE_P(
    S3Config, S3ConfigEndpoint,
    testing::Values(
        AllEndpoints("ExplicitOverS3cfg").Host("explicit.example").Scheme("https"),
        AllEndpoints("S3cfgOverEnvS3").Opt(NoExplicitEndpoint).Host("s3cfg.example"),
        AllEndpoints("EnvS3OverEnv")
            .Opt(NoExplicitEndpoint)
            .File(kS3cfg, "[default]\n")
            .Host("env-s3.example"),
        AllEndpoints("EnvOverProfileS3")
            .Opt(NoExplicitEndpoint)
            .File(kS3cfg, "[default]\n")
            .Env("AWS_ENDPOINT_URL_S3", "")
            .Host("env.example"),
        AllEndpoints("ProfileS3EndpointOverProfileEndpoint")
            .Opt(NoExplicitEndpoint)
            .File(kS3cfg, "[default]\n")
            .Env("AWS_ENDPOINT_URL_S3", "")
            .Env("AWS_ENDPOINT_URL", "")
            .Host("profile-s3.example"),
        Case("ProfileEndpointOverDefault")
            .File(kAwsConfig, "[profile dev]\nendpoint_url = http://localhost:9000\n")
            .Env("AWS_PROFILE", "dev")
            .Host("localhost:9000")
            .Scheme("http"),
        Case("DefaultIsAwsRegional").Host("s3.us-east-1.amazonaws.com").Scheme("https"),
        Case("DefaultFollowsRegion")
            .Env("AWS_REGION", "eu-central-1")
            .Host("s3.eu-central-1.amazonaws.com"),
        // Endpoint forms.
        Case("BareHost")
            .Opt([](S3Options& o) { o.endpoint = "Minio.Local"; })
            .Host("minio.local")
            .Scheme("https"),
        Case("HostPort")
            .Opt([](S3Options& o) { o.endpoint = "minio:9000"; })
            .Host("minio:9000")
            .Scheme("https"),
        Case("HttpUrlWithSlash")
            .Opt([](S3Options& o) { o.endpoint = "http://minio:9000/"; })
            .Host("minio:9000")
            .Scheme("http"),
        Case("UppercaseScheme")
            .Opt([](S3Options& o) { o.endpoint = "HTTPS://minio"; })
            .Host("minio")
            .Scheme("https"),
        Case("DefaultPortDropped")
            .Opt([](S3Options& o) { o.endpoint = "https://minio:443"; })
            .Host("minio"),
        Case("DefaultHttpPortDropped")
            .Opt([](S3Options& o) { o.endpoint = "http://minio:80/"; })
            .Host("minio"),
        Case("Port443KeptOverHttp")
            .Opt([](S3Options& o) {
              o.endpoint = "minio:443";
              o.force_http = true;
            })
            .Host("minio:443")
            .Scheme("http"),
        Case("Ipv6Literal")
            .Opt([](S3Options& o) { o.endpoint = "http://[::1]:9000"; })
            .Host("[::1]:9000"),
        Case("EndpointWithPathFails")
            .Opt([](S3Options& o) { o.endpoint = "https://minio/bucket"; })
            .Error("endpoint from S3Options::endpoint: 'https://minio/bucket' has a path"),
        Case("EndpointWithQueryFails")
            .Env("AWS_ENDPOINT_URL", "https://minio/?X-Amz-Security-Token=TOKENVALUE")
            .Error("endpoint from AWS_ENDPOINT_URL: has a query string"),
        Case("EndpointWithUserInfoFails")
            .Opt([](S3Options& o) { o.endpoint = "https://AK:SECRETVALUE@minio"; })
            .Error("user information"),
        Case("EndpointOtherSchemeFails")
            .Opt([](S3Options& o) { o.endpoint = "ftp://minio"; })
            .Error("scheme 'ftp' is not http or https"),
        Case("EndpointEmptyHostFails")
            .Opt([](S3Options& o) { o.endpoint = "https://"; })
            .Error("has no host"),
        Case("EndpointEmptyPortFails")
            .Opt([](S3Options& o) { o.endpoint = "minio:"; })
            .Error("empty port"),
        Case("EndpointBadPortFails")
            .Opt([](S3Options& o) { o.endpoint = "minio:90x"; })
            .Error("not a number"),
        Case("EndpointPortZeroFails")
            .Opt([](S3Options& o) { o.endpoint = "minio:0"; })
            .Error("out of range"),
        Case("EndpointPortTooLargeFails")
            .Opt([](S3Options& o) { o.endpoint = "minio:65536"; })
            .Error("out of range"),
        Case("EndpointErrorNamesS3cfgKey")
            .File(kS3cfg, "[default]\nhost_base = minio/x\n")
            .Error("endpoint from /home/u/.s3cfg [default] host_base"),
        Case("EndpointErrorNamesProfileKey")
            .File(kAwsConfig, "[default]\ns3 =\n    endpoint_url = minio?x\n")
            .Error("/home/u/.aws/config [profile default] s3.endpoint_url"),
        // Scheme.
        Case("ForceHttpOnBareHost")
            .Opt([](S3Options& o) {
              o.endpoint = "minio:9000";
              o.force_http = true;
            })
            .Scheme("http"),
        Case("ForceHttpKeepsEndpointScheme")
            .Opt([](S3Options& o) {
              o.endpoint = "https://minio:9000";
              o.force_http = true;
            })
            .Scheme("https"),
        Case("ForceHttpOnAwsDefault")
            .Opt([](S3Options& o) { o.force_http = true; })
            .Scheme("http")
            .Host("s3.us-east-1.amazonaws.com"),
        Case("HttpEndpointAllowedWithoutForceHttp")
            .Env("AWS_ENDPOINT_URL_S3", "http://minio:9000")
            .Scheme("http"),
        Case("S3cfgUseHttpsFalse")
            .File(kS3cfg, "[default]\nhost_base = minio:9000\nuse_https = False\n")
            .Scheme("http"),
        Case("S3cfgUseHttpsCaseInsensitive")
            .File(kS3cfg, "[default]\nhost_base = minio:9000\nuse_https = no\n")
            .Scheme("http"),
        Case("S3cfgUseHttpsTrue")
            .File(kS3cfg, "[default]\nhost_base = minio:9000\nuse_https = TRUE\n")
            .Scheme("https"),
        Case("S3cfgUseHttpsFalseAppliesToExplicitBareHost")
            .File(kS3cfg, "[default]\nuse_https = 0\n")
            .Opt([](S3Options& o) { o.endpoint = "minio"; })
            .Scheme("http"),
        Case("ExplicitForceHttpFalseOverS3cfgUseHttps")
            .File(kS3cfg, "[default]\nhost_base = minio:9000\nuse_https = False\n")
            .Opt([](S3Options& o) { o.force_http = false; })
            .Scheme("https"),
        Case("S3cfgUseHttpsFalseKeepsEndpointScheme")
            .File(kS3cfg, "[default]\nhost_base = https://minio:9000\nuse_https = False\n")
            .Scheme("https"),
        Case("S3cfgUseHttpsBadValueFails")
            .File(kS3cfg, "[default]\nuse_https = maybe\n")
            .Error("/home/u/.s3cfg [default] use_https: expected True or False")),
    CaseName);

// --- region -------------------------------------------------------------------

class S3ConfigRegion : public testing::TestWithParam<Case> {};
TEST_P(S3ConfigRegion, Resolves) { RunCase(GetParam()); }

Case AllRegions(const std::string& name) {
  Case c(name);
  c.Opt([](S3Options& o) { o.region = "explicit-1"; })
      .Env("AWS_REGION", "env-1")
      .Env("AWS_DEFAULT_REGION", "envdefault-1")
      .File(kAwsConfig, "[default]\nregion = profile-1\n")
      .File(kS3cfg, "[default]\nbucket_location = s3cfg-1\n");
  return c;
}

void NoExplicitRegion(S3Options& o) { o.region.reset(); }

INSTANTIATE_TEST_SUITE_P(
    S3Config, S3ConfigRegion,
    testing::Values(
        AllRegions("ExplicitOverAwsRegion").Region("explicit-1"),
        AllRegions("AwsRegionOverAwsDefaultRegion").Opt(NoExplicitRegion).Region("env-1"),
        AllRegions("AwsDefaultRegionOverProfile")
            .Opt(NoExplicitRegion)
            .Env("AWS_REGION", "")
            .Region("envdefault-1"),
        AllRegions("ProfileOverS3cfgBucketLocation")
            .Opt(NoExplicitRegion)
            .Env("AWS_REGION", "")
            .Env("AWS_DEFAULT_REGION", "")
            .Region("profile-1"),
        Case("S3cfgBucketLocation")
            .File(kS3cfg, "[default]\nbucket_location = eu-west-2\n")
            .Region("eu-west-2")
            .Host("s3.eu-west-2.amazonaws.com"),
        Case("S3cfgBucketLocationUsIgnored")
            .File(kS3cfg, "[default]\nbucket_location = US\n")
            .Region("us-east-1"),
        Case("S3cfgBucketLocationOverEndpointHost")
            .File(kS3cfg, "[default]\nbucket_location = eu-west-2\n")
            .Opt([](S3Options& o) { o.endpoint = "s3.ap-south-1.amazonaws.com"; })
            .Region("eu-west-2"),
        Case("RegionFromAwsEndpointHost")
            .Opt([](S3Options& o) { o.endpoint = "https://s3.ap-south-1.amazonaws.com"; })
            .Region("ap-south-1"),
        Case("RegionFromLegacyDashedAwsHost")
            .Opt([](S3Options& o) { o.endpoint = "s3-us-west-2.amazonaws.com"; })
            .Region("us-west-2"),
        Case("RegionFromDualstackAwsHost")
            .Opt([](S3Options& o) { o.endpoint = "s3.dualstack.eu-north-1.amazonaws.com"; })
            .Region("eu-north-1"),
        Case("NonAwsEndpointDefaultsToUsEast1")
            .Opt([](S3Options& o) { o.endpoint = "s3.example.com"; })
            .Region("us-east-1"),
        Case("DefaultRegion").Region("us-east-1")),
    CaseName);

// --- addressing ---------------------------------------------------------------

class S3ConfigAddressing : public testing::TestWithParam<Case> {};
TEST_P(S3ConfigAddressing, Resolves) { RunCase(GetParam()); }

void Minio(S3Options& o) { o.endpoint = "minio:9000"; }
void Path(S3Options& o) { o.addressing = S3Options::Addressing::kPath; }
void Virtual(S3Options& o) { o.addressing = S3Options::Addressing::kVirtual; }

INSTANTIATE_TEST_SUITE_P(
    S3Config, S3ConfigAddressing,
    testing::Values(
        Case("AutoAwsIsVirtual").Request("bkt", "bkt.s3.us-east-1.amazonaws.com", "/k"),
        Case("AutoOtherIsPath").Opt(Minio).Request("bkt", "minio:9000", "/bkt/k"),
        Case("AutoCaiosIsVirtual")
            .Opt([](S3Options& o) { o.endpoint = "https://cwobject.com"; })
            .Request("bkt", "bkt.cwobject.com", "/k"),
        Case("AutoLotaIsVirtual")
            .Opt([](S3Options& o) { o.endpoint = "http://CWLOTA.com"; })
            .Request("my.bkt", "my.bkt.cwlota.com", "/k"),
        Case("AutoAwsDottedBucketOverHttpsIsPath")
            .Request("my.bkt", "s3.us-east-1.amazonaws.com", "/my.bkt/k"),
        Case("AutoAwsDottedBucketOverHttpIsVirtual")
            .Opt([](S3Options& o) { o.force_http = true; })
            .Request("my.bkt", "my.bkt.s3.us-east-1.amazonaws.com", "/k"),
        Case("AutoAwsLegacyBucketNameIsPath")
            .Request("My_Bucket", "s3.us-east-1.amazonaws.com", "/My_Bucket/k"),
        Case("ExplicitPathOnAws").Opt(Path).Request("bkt", "s3.us-east-1.amazonaws.com", "/bkt/k"),
        Case("ExplicitVirtualOnMinio")
            .Opt(Minio)
            .Opt(Virtual)
            .Request("bkt", "bkt.minio:9000", "/k"),
        Case("ExplicitVirtualDottedBucketOverHttps")
            .Opt(Virtual)
            .Request("my.bkt", "my.bkt.s3.us-east-1.amazonaws.com", "/k"),
        Case("ConfigPathOnAws")
            .File(kAwsConfig, "[default]\ns3 =\n  addressing_style = path\n")
            .Request("bkt", "s3.us-east-1.amazonaws.com", "/bkt/k"),
        Case("ConfigVirtualOnMinio")
            .Opt(Minio)
            .File(kAwsConfig, "[default]\ns3 =\n  addressing_style = virtual\n  endpoint_url = x\n")
            .Request("bkt", "bkt.minio:9000", "/k"),
        Case("ConfigAutoOnMinio")
            .Opt(Minio)
            .File(kAwsConfig, "[default]\ns3 =\n  addressing_style = auto\n")
            .Request("bkt", "minio:9000", "/bkt/k"),
        Case("ExplicitOverConfig")
            .Opt(Path)
            .File(kAwsConfig, "[default]\ns3 =\n  addressing_style = virtual\n")
            .Request("bkt", "s3.us-east-1.amazonaws.com", "/bkt/k"),
        Case("ConfigAddressingFromSelectedProfile")
            .Env("AWS_PROFILE", "dev")
            .File(kAwsConfig,
                  "[default]\ns3 =\n  addressing_style = virtual\n"
                  "[profile dev]\ns3 =\n  addressing_style = path\n")
            .Request("bkt", "s3.us-east-1.amazonaws.com", "/bkt/k"),
        Case("ConfigAddressingBadValueFails")
            .File(kAwsConfig, "[default]\ns3 =\n  addressing_style = sideways\n")
            .Error("/home/u/.aws/config [profile default] s3.addressing_style: 'sideways'")),
    CaseName);

// --- the INI reader, through the s3cmd and AWS files --------------------------

class S3ConfigIni : public testing::TestWithParam<Case> {};
TEST_P(S3ConfigIni, Resolves) { RunCase(GetParam()); }

INSTANTIATE_TEST_SUITE_P(
    S3Config, S3ConfigIni,
    testing::Values(
        Case("CommentsColonsCrlfBom")
            .File(kS3cfg,
                  "\xEF\xBB\xBF# s3cmd config\r\n; another comment\r\n[default]\r\n"
                  "Access_Key: AK_X\r\n\r\n  # indented comment\r\n"
                  "secret_key = SECRETVALUE;with#chars=\r\nhost_base = minio:9000\r\n")
            .Creds("AK_X", "SECRETVALUE;with#chars=")
            .Host("minio:9000"),
        Case("LaterSectionsAndKeysWin")
            .File(kS3cfg,
                  "[default]\naccess_key = AK_OLD\nsecret_key = SECRETVALUE_1\n"
                  "[default]\naccess_key = AK_NEW\n")
            .Creds("AK_NEW", "SECRETVALUE_1"),
        Case("NestedSectionEndsAtUnindentedKey")
            .File(kAwsConfig,
                  "[default]\ns3 =\n  addressing_style = path\n\n  endpoint_url = http://a:1\n"
                  "endpoint_url = http://b:2\nregion = r-1\n")
            .Host("a:1")
            .Region("r-1")
            .Request("bkt", "a:1", "/bkt/k"),
        Case("SettingBeforeSectionFails")
            .File(kS3cfg, "access_key = AK\n[default]\n")
            .Error("/home/u/.s3cfg line 1: a setting before any [section] header"),
        Case("UnclosedSectionFails")
            .File(kAwsConfig, "\n\n[default\n")
            .Error("/home/u/.aws/config line 3: section header without a closing ']'"),
        Case("NestedLineWithoutValueFails")
            .File(kAwsConfig, "[default]\ns3 =\n  SECRETVALUE_oops\n")
            .Error("line 3: expected 'key = value' in the 's3' sub-section")),
    CaseName);

// --- URIs and URLs ------------------------------------------------------------

struct UriCase {
  const char* name;
  const char* uri;
  const char* bucket;  // nullptr: an error is expected
  const char* key;
};

class S3ConfigParseUri : public testing::TestWithParam<UriCase> {};

TEST_P(S3ConfigParseUri, Parses) {
  const UriCase& c = GetParam();
  const Result<Location> r = ParseS3Uri(c.uri);
  if (c.bucket == nullptr) {
    ASSERT_FALSE(r.ok()) << c.uri;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find(c.uri), std::string::npos) << r.status().message();
    return;
  }
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->bucket, c.bucket);
  EXPECT_EQ(r->key, c.key);
}

INSTANTIATE_TEST_SUITE_P(
    S3Config, S3ConfigParseUri,
    testing::Values(UriCase{"Plain", "s3://bkt/model.tensors", "bkt", "model.tensors"},
                    UriCase{"Nested", "s3://bkt/a/b/c.tensors", "bkt", "a/b/c.tensors"},
                    UriCase{"UppercaseScheme", "S3://bkt/k", "bkt", "k"},
                    UriCase{"DottedBucket", "s3://my.bkt/k", "my.bkt", "k"},
                    UriCase{"DoubleSlashDropped", "s3://bkt//k", "bkt", "k"},
                    UriCase{"TrailingSlashKept", "s3://bkt/dir/", "bkt", "dir/"},
                    UriCase{"QueryCharsAreKey", "s3://bkt/a?b#c", "bkt", "a?b#c"},
                    UriCase{"SpacesAndUnicode", "s3://bkt/my file é.bin", "bkt", "my file é.bin"},
                    UriCase{"MissingKey", "s3://bkt", nullptr, nullptr},
                    UriCase{"MissingKeyTrailingSlash", "s3://bkt/", nullptr, nullptr},
                    UriCase{"OnlySlashes", "s3://bkt///", nullptr, nullptr},
                    UriCase{"EmptyBucket", "s3:///x", nullptr, nullptr},
                    UriCase{"Empty", "s3://", nullptr, nullptr},
                    UriCase{"OtherScheme", "gs://bkt/k", nullptr, nullptr},
                    UriCase{"NoScheme", "bkt/k", nullptr, nullptr},
                    UriCase{"BucketWithPort", "s3://bkt:9000/k", nullptr, nullptr},
                    UriCase{"BucketWithUserInfo", "s3://u@bkt/k", nullptr, nullptr}),
    [](const testing::TestParamInfo<UriCase>& info) { return std::string(info.param.name); });

TEST(S3ConfigObjectUrl, EncodesKeyOnce) {
  ResolvedConfig path_style;
  path_style.scheme = "http";
  path_style.host = "minio:9000";
  const Location loc{"bkt", "dir/my file+é%20~x.bin"};
  // '%' becomes %25: the raw key is encoded exactly once.
  EXPECT_EQ(path_style.ObjectUrl(loc), "http://minio:9000/bkt/dir/my%20file%2B%C3%A9%2520~x.bin");
  EXPECT_EQ(path_style.RequestPath(loc), "/bkt/dir/my file+é%20~x.bin");

  ResolvedConfig virtual_hosted = path_style;
  virtual_hosted.scheme = "https";
  virtual_hosted.host = "s3.us-east-1.amazonaws.com";
  virtual_hosted.virtual_hosted = true;
  EXPECT_EQ(virtual_hosted.ObjectUrl(loc),
            "https://bkt.s3.us-east-1.amazonaws.com/dir/my%20file%2B%C3%A9%2520~x.bin");
}

TEST(S3ConfigObjectUrl, ResolvedEndToEnd) {
  const Environment env =
      PinnedEnvironment({}, {{kS3cfg, "[default]\nhost_base = http://minio:9000\n"}});
  auto cfg = ResolveConfig(S3Options(), env);
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  auto loc = ParseS3Uri("s3://models/llama 3/model.tensors");
  ASSERT_TRUE(loc.ok());
  EXPECT_EQ(cfg->ObjectUrl(loc.value()), "http://minio:9000/models/llama%203/model.tensors");
  EXPECT_FALSE(cfg->credentials.has_value());
}

// --- the real process environment ---------------------------------------------

TEST(S3ConfigFromProcess, ReadsVariablesAndFiles) {
  ASSERT_EQ(::setenv("TZR_S3_CONFIG_TEST_VAR", "v=1", 1), 0);
  const Environment env = Environment::FromProcess();
  ASSERT_NE(env.vars.find("TZR_S3_CONFIG_TEST_VAR"), env.vars.end());
  EXPECT_EQ(env.vars.at("TZR_S3_CONFIG_TEST_VAR"), "v=1");
  ::unsetenv("TZR_S3_CONFIG_TEST_VAR");

  char dir_template[] = "/tmp/tzr_s3cfg_XXXXXX";
  ASSERT_NE(::mkdtemp(dir_template), nullptr);
  const std::string dir = dir_template;
  const std::string file = dir + "/s3cfg";
  FILE* f = std::fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("[default]\n", f);
  std::fclose(f);

  auto present = env.read_file(file);
  ASSERT_TRUE(present.ok()) << present.status().ToString();
  ASSERT_TRUE(present->has_value());
  EXPECT_EQ(**present, "[default]\n");

  auto missing = env.read_file(dir + "/nope");
  ASSERT_TRUE(missing.ok());
  EXPECT_FALSE(missing->has_value());
  auto under_file = env.read_file(file + "/nope");  // ENOTDIR: cannot exist either
  ASSERT_TRUE(under_file.ok());
  EXPECT_FALSE(under_file->has_value());

  auto directory = env.read_file(dir);  // EISDIR is an error, not absence
  EXPECT_FALSE(directory.ok());
  EXPECT_EQ(directory.status().sys_errno(), EISDIR);

  std::remove(file.c_str());
  ::rmdir(dir.c_str());
}

}  // namespace
}  // namespace tensorizer::s3
