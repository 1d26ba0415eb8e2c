// Remote options of the subcommands that read or write URIs: how to reach
// an S3 endpoint and any HTTP(S) server, shared by inspect, verify, bench,
// convert and cp so every one takes the same spelling.
//
//   --s3-endpoint URL  --s3-region R  --s3-profile P
//   --ca-file F  --ca-path D  --insecure
//   --connect-timeout-ms N  --retries N  --deadline-ms N
//
// Credentials are never options: a secret on the command line shows in `ps`
// and shell history. They come from ~/.s3cfg, the AWS environment variables
// and ~/.aws/{credentials,config}, resolved by the library
// (docs/configuration.md); --s3-profile only picks the profile.
#pragma once

#include <optional>
#include <string>

#include "command.h"
#include "tensorizer/source.h"
#include "tensorizer/write.h"

namespace tensorizer::cli {

// The --help block every command with remote options prints.
inline constexpr char kRemoteOptionsHelp[] =
    "remote options (for s3://, http(s):// and redis:// URIs):\n"
    "  --s3-endpoint URL       S3 endpoint: host[:port] (https) or http(s)://host[:port]\n"
    "                          (default: ~/.s3cfg host_base, AWS_ENDPOINT_URL_S3,\n"
    "                          AWS_ENDPOINT_URL, ~/.aws/config, else AWS)\n"
    "  --s3-region R           region requests are signed for (default: AWS_REGION,\n"
    "                          ~/.aws/config, else us-east-1)\n"
    "  --s3-profile P          profile of ~/.aws/credentials and ~/.aws/config\n"
    "                          (default: AWS_PROFILE, else default)\n"
    "  --ca-file F             also trust the CA certificates in PEM file F\n"
    "  --ca-path D             also trust the CA certificates in hashed directory D\n"
    "  --insecure              accept any TLS certificate (no verification)\n"
    "  --connect-timeout-ms N  give up connecting after N ms (default 10000; 0: none)\n"
    "  --retries N             retry a failed request up to N times (default 6)\n"
    "  --deadline-ms N         fail a load still running N ms after it opened\n"
    "                          (default: none)\n"
    "S3 credentials are never taken from the command line: they come from\n"
    "~/.s3cfg, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, or\n"
    "~/.aws/credentials and ~/.aws/config; with none, requests go unsigned.\n";

// Adds the remote options to a subcommand's option spec.
void AddRemoteOptions(OptionSpec* spec);

// What the remote options say, for reading and for writing.
struct RemoteOptions {
  SourceOptions source;
  SinkOptions sink;
};

// The options given (library defaults for the rest); nothing, with
// *usage_error set, when a value is malformed.
std::optional<RemoteOptions> RemoteOptionsFromArgs(const ParsedArgs& args,
                                                   std::string* usage_error);

}  // namespace tensorizer::cli
