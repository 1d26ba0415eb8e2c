// See remote_options.h.
#include "remote_options.h"

namespace tensorizer::cli {

void AddRemoteOptions(OptionSpec* spec) {
  spec->flags.push_back("--insecure");
  for (const char* o : {"--s3-endpoint", "--s3-region", "--s3-profile", "--ca-file", "--ca-path",
                        "--connect-timeout-ms", "--retries", "--deadline-ms"}) {
    spec->valued.push_back(o);
  }
}

std::optional<RemoteOptions> RemoteOptionsFromArgs(const ParsedArgs& args,
                                                   std::string* usage_error) {
  HttpOptions http;
  S3Options s3;
  // An empty value would read as "not given" to the library's resolution
  // and silently fall through to the environment: refuse it instead.
  for (const char* o : {"--s3-endpoint", "--s3-region", "--s3-profile", "--ca-file", "--ca-path"}) {
    if (auto v = args.value(o); v && v->empty()) {
      *usage_error = std::string(o) + " needs a non-empty value";
      return std::nullopt;
    }
  }
  if (auto v = args.value("--s3-endpoint")) s3.endpoint = *v;
  if (auto v = args.value("--s3-region")) s3.region = *v;
  if (auto v = args.value("--s3-profile")) s3.profile = *v;
  if (auto v = args.value("--ca-file")) http.ca_file = *v;
  if (auto v = args.value("--ca-path")) http.ca_path = *v;
  if (args.has("--insecure")) http.verify_tls = false;
  if (auto v = args.value("--connect-timeout-ms")) {
    auto n = ParseCount(*v, 0, 24ull * 3600 * 1000);
    if (!n) {
      *usage_error = "--connect-timeout-ms needs a whole number of milliseconds up to 86400000";
      return std::nullopt;
    }
    http.connect_timeout_ms = static_cast<uint32_t>(*n);
  }
  if (auto v = args.value("--retries")) {
    auto n = ParseCount(*v, 0, 100);
    if (!n) {
      *usage_error = "--retries needs a whole number from 0 to 100";
      return std::nullopt;
    }
    http.max_retries = static_cast<int>(*n);
  }
  if (auto v = args.value("--deadline-ms")) {
    auto n = ParseCount(*v, 1, 24ull * 3600 * 1000);
    if (!n) {
      *usage_error = "--deadline-ms needs a whole number of milliseconds from 1 to 86400000";
      return std::nullopt;
    }
    http.deadline_ms = static_cast<uint32_t>(*n);
  }
  RemoteOptions out;
  out.source.http = http;
  out.source.s3 = s3;
  out.sink.http = http;
  out.sink.s3 = s3;
  return out;
}

}  // namespace tensorizer::cli
