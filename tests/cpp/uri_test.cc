// The URI model (storage/parsed_uri.h), the decimal parser (util/decimal.h)
// and the scheme registry (storage/registry.h): table-driven.
#include <gtest/gtest.h>

#include <cstdint>
#include <optional>
#include <string>

#include "storage/parsed_uri.h"
#include "storage/registry.h"
#include "tensorizer/convert.h"
#include "tensorizer/source.h"
#include "tensorizer/write.h"
#include "util/decimal.h"

namespace tensorizer::internal {
namespace {

struct DecimalCase {
  const char* text;
  std::optional<uint64_t> value;
};

TEST(Decimal, Table) {
  const DecimalCase cases[] = {
      {"0", 0},
      {"7", 7},
      {"000123", 123},
      {"18446744073709551615", UINT64_MAX},
      {"000000000000000000000018446744073709551615", UINT64_MAX},
      {"18446744073709551616", std::nullopt},
      {"99999999999999999999", std::nullopt},
      {"", std::nullopt},
      {"-1", std::nullopt},
      {"+1", std::nullopt},
      {" 1", std::nullopt},
      {"1 ", std::nullopt},
      {"1x", std::nullopt},
      {"0x10", std::nullopt},
  };
  for (const DecimalCase& c : cases) {
    uint64_t v = 42;
    const bool ok = ParseDecimal(c.text, &v);
    EXPECT_EQ(ok, c.value.has_value()) << c.text;
    EXPECT_EQ(v, c.value.value_or(42)) << c.text;  // untouched on failure
  }
}

TEST(UriScheme, Table) {
  const std::pair<const char*, std::optional<std::string>> cases[] = {
      {"s3://b/k", "s3"},
      {"HTTPS://h/p", "https"},
      {"redis+tls.v2-x://h", "redis+tls.v2-x"},
      {"file:///tmp/x", "file"},
      {"/tmp/x", std::nullopt},
      {"relative/path", std::nullopt},
      {"dir/x://y", std::nullopt},  // a relative path, not scheme "dir/x"
      {"./s3://b/k", std::nullopt},
      {"://h/p", std::nullopt},
      {"1http://h", std::nullopt},  // a scheme starts with a letter
      {"ht tp://h", std::nullopt},
      {"C:/x", std::nullopt},
      {"s3:/b/k", std::nullopt},
  };
  for (const auto& [text, want] : cases) EXPECT_EQ(UriScheme(text), want) << text;
}

struct HostPortCase {
  const char* text;
  const char* host;  // nullptr: an error
  bool ipv6;
  std::optional<uint16_t> port;
  const char* error;
};

TEST(HostPort, Table) {
  const HostPortCase cases[] = {
      {"h", "h", false, std::nullopt, nullptr},
      {"h:80", "h", false, 80, nullptr},
      {"h:", "h", false, std::nullopt, nullptr},  // an empty port: the default
      {"h:065535", "h", false, 65535, nullptr},
      {"10.0.0.1:9000", "10.0.0.1", false, 9000, nullptr},
      {"[::1]", "::1", true, std::nullopt, nullptr},
      {"[::1]:6390", "::1", true, 6390, nullptr},
      {"[fe80::1%25eth0]:1", "fe80::1%25eth0", true, 1, nullptr},
      {"", nullptr, false, std::nullopt, "has no host"},
      {":80", nullptr, false, std::nullopt, "has no host"},
      {"[]", nullptr, false, std::nullopt, "has no host"},
      {"[::1", nullptr, false, std::nullopt, "has an unclosed '['"},
      {"[::1]x", nullptr, false, std::nullopt, "has text after the IPv6 address"},
      {"h:0", nullptr, false, std::nullopt, "has a port out of range"},
      {"h:65536", nullptr, false, std::nullopt, "has a port out of range"},
      {"h:99999999999999999999999", nullptr, false, std::nullopt, "has a port out of range"},
      {"h:9x", nullptr, false, std::nullopt, "has a port that is not a number"},
      {"h:-1", nullptr, false, std::nullopt, "has a port that is not a number"},
  };
  for (const HostPortCase& c : cases) {
    Result<HostPort> hp = ParseHostPort(c.text);
    if (c.host == nullptr) {
      ASSERT_FALSE(hp.ok()) << c.text;
      EXPECT_EQ(hp.status().code(), StatusCode::kInvalidArgument) << c.text;
      EXPECT_EQ(hp.status().message(), c.error) << c.text;
      continue;
    }
    ASSERT_TRUE(hp.ok()) << c.text << ": " << hp.status().ToString();
    EXPECT_EQ(hp->host, c.host) << c.text;
    EXPECT_EQ(hp->ipv6, c.ipv6) << c.text;
    EXPECT_EQ(hp->port, c.port) << c.text;
  }
  EXPECT_EQ(ParseHostPort("[::1]:80")->UrlHost(), "[::1]");
  EXPECT_EQ(ParseHostPort("h:80")->UrlHost(), "h");
}

struct UriCase {
  const char* uri;
  const char* scheme;
  std::optional<std::string> userinfo;
  const char* host;
  std::optional<uint16_t> port;
  const char* path;
  std::optional<std::string> query;
  std::optional<std::string> fragment;
  const char* after_authority;
};

TEST(ParsedUri, Table) {
  const UriCase cases[] = {
      {"https://h/a/b", "https", std::nullopt, "h", std::nullopt, "/a/b", std::nullopt,
       std::nullopt, "/a/b"},
      {"HTTP://u:p%40w@h:8080/x?sig=1&a=b#frag", "http", "u:p%40w", "h", 8080, "/x",
       "sig=1&a=b", "frag", "/x?sig=1&a=b#frag"},
      {"redis://:pw@[::1]:6390/p", "redis", ":pw", "::1", 6390, "/p", std::nullopt,
       std::nullopt, "/p"},
      {"http://a@b@h/p", "http", "a@b", "h", std::nullopt, "/p", std::nullopt, std::nullopt,
       "/p"},  // a password may hold '@': the last one ends the userinfo
      {"s3://bucket/k?x#y", "s3", std::nullopt, "bucket", std::nullopt, "/k", "x", "y",
       "/k?x#y"},
      {"file:///tmp/x", "file", std::nullopt, "", std::nullopt, "/tmp/x", std::nullopt,
       std::nullopt, "/tmp/x"},
      {"http://h?q", "http", std::nullopt, "h", std::nullopt, "", "q", std::nullopt, "?q"},
      {"http://h", "http", std::nullopt, "h", std::nullopt, "", std::nullopt, std::nullopt,
       ""},
      {"http://h/#", "http", std::nullopt, "h", std::nullopt, "/", std::nullopt, "", "/#"},
  };
  for (const UriCase& c : cases) {
    Result<ParsedUri> u = ParseUri(c.uri);
    ASSERT_TRUE(u.ok()) << c.uri << ": " << u.status().ToString();
    EXPECT_EQ(u->scheme, c.scheme) << c.uri;
    EXPECT_EQ(u->userinfo, c.userinfo) << c.uri;
    EXPECT_EQ(u->host_port.host, c.host) << c.uri;
    EXPECT_EQ(u->host_port.port, c.port) << c.uri;
    EXPECT_EQ(u->path, c.path) << c.uri;
    EXPECT_EQ(u->query, c.query) << c.uri;
    EXPECT_EQ(u->fragment, c.fragment) << c.uri;
    EXPECT_EQ(u->after_authority, c.after_authority) << c.uri;
  }
}

TEST(ParsedUri, ErrorsNameTheUriWithoutItsSecrets) {
  const std::pair<const char*, const char*> cases[] = {
      {"dir/x://y", "dir/x://y is not a scheme://... URI"},
      {"http://u:SECRET@[::1/p", "http://u:***@[::1/p has an unclosed '['"},
      {"http://h:99999/p?X-Amz-Signature=SECRET",
       "http://h:99999/p?X-Amz-Signature=*** has a port out of range"},
  };
  for (const auto& [uri, message] : cases) {
    Result<ParsedUri> u = ParseUri(uri);
    ASSERT_FALSE(u.ok()) << uri;
    EXPECT_EQ(u.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(u.status().message(), message);
  }
}

TEST(PercentDecode, Table) {
  const std::pair<const char*, std::optional<std::string>> cases[] = {
      {"plain", "plain"},     {"p%40ss%3Aw", "p@ss:w"}, {"%2f%2F", "//"},
      {"%00", std::string(1, '\0')}, {"%", std::nullopt}, {"%4", std::nullopt},
      {"%zz", std::nullopt}, {"a%4g", std::nullopt},  {"", ""},
  };
  for (const auto& [in, want] : cases) {
    std::string out = "untouched";
    const bool ok = PercentDecode(in, &out);
    EXPECT_EQ(ok, want.has_value()) << in;
    EXPECT_EQ(out, want.value_or("untouched")) << in;
  }
  Result<UserInfo> info = DecodeUserInfo("al%69ce:p%40ss");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->user, "alice");
  EXPECT_EQ(info->password, "p@ss");
  EXPECT_EQ(DecodeUserInfo("bob")->password, std::nullopt);
  EXPECT_EQ(DecodeUserInfo(":")->password, "");
  Result<UserInfo> bad = DecodeUserInfo("u:%zzSECRET");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message().find("SECRET"), std::string::npos);
}

struct RegistryCase {
  const char* uri;
  const char* kind;  // nullptr: no backend
  bool remote;       // IsRemoteUri
  bool writable;
};

TEST(SchemeRegistry, Table) {
  const RegistryCase cases[] = {
      {"/tmp/x.tensors", "file", false, true},
      {"relative/x.tensors", "file", false, true},
      {"dir/x://y", "file", false, true},
      {"file:///tmp/x", "file", false, true},
      {"FILE:///tmp/x", "file", false, true},
      {"http://h/x", "http", true, false},
      {"HTTPS://h/x", "http", true, false},
      {"s3://b/k", "s3", true, true},
      {"redis://h/p", "redis", true, false},
      {"ftp://h/x", nullptr, true, false},
  };
  for (const RegistryCase& c : cases) {
    const Backend* b = FindBackend(c.uri);
    if (c.kind == nullptr) {
      EXPECT_EQ(b, nullptr) << c.uri;
    } else {
      ASSERT_NE(b, nullptr) << c.uri;
      EXPECT_STREQ(b->kind, c.kind) << c.uri;
      EXPECT_EQ(b->create_sink != nullptr, c.writable) << c.uri;
    }
    EXPECT_EQ(IsRemoteUri(c.uri), c.remote) << c.uri;
  }
  EXPECT_EQ(LocalPath("file:///tmp/x"), "/tmp/x");
  EXPECT_EQ(LocalPath("dir/x://y"), "dir/x://y");
  EXPECT_EQ(WritableSchemes(), "local paths and s3://");
}

// OpenSource and IsRemoteUri used to disagree: "dir/x://y" was an
// unsupported scheme to one and a relative path to the other.
TEST(SchemeRegistry, OpenSourceTakesWhatIsRemoteUriCallsAPathAsAPath) {
  Result<std::unique_ptr<Source>> s = OpenSource("no-such-dir/x://y");
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().sys_errno(), ENOENT) << s.status().ToString();
  Result<std::unique_ptr<Source>> ftp = OpenSource("ftp://u:SECRET@h/x");
  ASSERT_FALSE(ftp.ok());
  EXPECT_EQ(ftp.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ftp.status().message(),
            "unsupported URI scheme 'ftp' in ftp://u:***@h/x (tensorizer opens local paths, "
            "file://, http://, https://, s3:// and redis://)");
  Result<std::unique_ptr<Sink>> redis = CreateSink("redis://:SECRET@h/p");
  ASSERT_FALSE(redis.ok());
  EXPECT_EQ(redis.status().message(),
            "cannot write to 'redis' URIs (redis://:***@h/p): only local paths and s3:// are "
            "writable");
}

}  // namespace
}  // namespace tensorizer::internal
