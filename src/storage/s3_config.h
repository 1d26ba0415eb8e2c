// Where an S3 request goes and how it is signed: s3:// URI parsing, endpoint,
// region, addressing style and credential resolution.
//
// Everything here is pure: the process environment and the home directory
// come in through `Environment`, so tests pin them, and nothing touches the
// network. Files are read through Environment::read_file for the same reason.
//
// Resolution order (the reference tensorizer's, extended with what boto3
// users expect):
//   credentials: explicit S3Options (both given; "" and "" means anonymous)
//     -> s3cmd config (S3Options::s3cfg_path, which must exist, or ~/.s3cfg;
//        its access_token is the session token)
//     -> AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN)
//     -> the profile (S3Options::profile, AWS_PROFILE, "default") in
//        AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, then in
//        AWS_CONFIG_FILE or ~/.aws/config
//     -> none: anonymous (unsigned) requests, for public buckets.
//   A partial explicit pair (only the key id) is completed from the s3cmd
//   config, as the reference does. Half a pair in any one source is an error.
//   Each setting below is resolved on its own: explicit credentials do not
//   stop the s3cmd config's host_base from being the endpoint.
//   endpoint: explicit -> s3cfg host_base (with its use_https) ->
//     AWS_ENDPOINT_URL_S3 -> AWS_ENDPOINT_URL -> the profile's
//     `s3 = endpoint_url` then `endpoint_url` in the config file ->
//     AWS's own: s3.<region>.amazonaws.com. No vendor's endpoint is a default.
//   scheme: the endpoint's own when it has one; otherwise https, or http with
//     force_http or s3cfg use_https = False.
//   region: explicit -> AWS_REGION -> AWS_DEFAULT_REGION -> the profile's
//     `region` -> s3cfg bucket_location (unless "US") -> the region named by
//     an AWS endpoint's host (s3.<region>.amazonaws.com) -> "us-east-1".
//   addressing: explicit -> the profile's `s3 = addressing_style` -> auto:
//     virtual-hosted for *.amazonaws.com (unless the bucket name has a dot
//     and the scheme is https, or is not a DNS label: capitals, '_') and for
//     cwobject.com / cwlota.com; path-style otherwise. The bucket is known
//     only per request, so that exception is applied by RequestHost.
#pragma once

#include <functional>
#include <map>
#include <optional>
#include <string>

#include "storage/sigv4.h"
#include "tensorizer/source.h"
#include "tensorizer/status.h"

namespace tensorizer::s3 {

struct Environment {
  std::map<std::string, std::string> vars;  // environment variables
  std::string home;                         // for ~/.s3cfg and ~/.aws/*
  // Returns the file's contents, or nullopt if it does not exist.
  // Other read errors are errors.
  std::function<Result<std::optional<std::string>>(const std::string& path)> read_file;

  // The real process environment, $HOME and the filesystem.
  static Environment FromProcess();
};

struct Location {
  std::string bucket;
  std::string key;  // raw (unencoded), without the leading '/'
};

// "s3://bucket/key/with/slashes" (scheme case-insensitive). The bucket and
// the key must be non-empty.
Result<Location> ParseS3Uri(const std::string& uri);

struct ResolvedConfig {
  std::string scheme;  // "https" or "http"
  std::string host;    // the endpoint's host[:port], without the bucket
  std::string region;
  // Virtual-hosted addressing for this endpoint. With path_style_fallback
  // (auto addressing on AWS), a bucket that cannot be a TLS-valid host label
  // is still addressed path-style; VirtualHostedFor decides per bucket.
  bool virtual_hosted = false;
  bool path_style_fallback = false;
  std::optional<Credentials> credentials;  // nullopt: anonymous
  // Where the credentials came from, for error messages: "explicit
  // arguments", "/root/.s3cfg", "environment", "/root/.aws/credentials
  // [profile default]", "none (anonymous)".
  std::string credentials_from;

  bool VirtualHostedFor(const Location& loc) const;
  // The Host header and the path to sign for one object:
  // path-style  -> host,            "/bucket/key"
  // virtual     -> "bucket." + host, "/key"
  std::string RequestHost(const Location& loc) const;
  std::string RequestPath(const Location& loc) const;
  // scheme://RequestHost + URI-encoded RequestPath.
  std::string ObjectUrl(const Location& loc) const;
};

Result<ResolvedConfig> ResolveConfig(const S3Options& options, const Environment& env);

}  // namespace tensorizer::s3
