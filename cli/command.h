// The pieces every subcommand of the `tensorizer` tool shares: its exit
// codes, the table entry main.cc dispatches on, and a small option parser.
//
// A subcommand only parses its arguments, calls the library and prints.
// Results go to stdout, errors to stderr prefixed with "tensorizer CMD: ".
// Exit codes are part of the interface (scripts and CI jobs test them) and
// are listed in `tensorizer --help`.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tensorizer/format.h"
#include "tensorizer/source.h"
#include "tensorizer/status.h"

namespace tensorizer::cli {

enum ExitCode : int {
  kExitOk = 0,
  kExitFailed = 1,  // the file could not be read, is invalid, or failed a check
  kExitUsage = 2,   // unknown command or option, missing or extra argument
};

struct Command {
  const char* name;
  const char* summary;                               // one line for `tensorizer --help`
  const char* help;                                  // the full `tensorizer NAME --help` text
  int (*run)(const std::vector<std::string>& args);  // args after the command name
};

extern const Command kInspectCommand;
extern const Command kVerifyCommand;
extern const Command kBenchCommand;
extern const Command kConvertCommand;
extern const Command kCpCommand;

// Command-line options of one subcommand: `--flag`, `--opt VALUE` or
// `--opt=VALUE`; `--` ends the options; `-h` is `--help`.
struct OptionSpec {
  std::vector<std::string> flags;   // take no value ("--json")
  std::vector<std::string> valued;  // take one value ("--threads")
};

struct ParsedArgs {
  bool help = false;
  std::vector<std::string> positional;
  std::map<std::string, std::string> values;  // valued options given, last one wins
  std::vector<std::string> flags;             // flags given

  bool has(const std::string& flag) const;
  std::optional<std::string> value(const std::string& option) const;
};

// Parses `args`; on a usage error returns nothing and sets `error`.
std::optional<ParsedArgs> ParseArgs(const std::vector<std::string>& args, const OptionSpec& spec,
                                    std::string* error);

// The start every subcommand shares: parse `args`, answer --help, and
// require exactly as many positional arguments as `operands` names (e.g.
// {"FILE"} or {"IN", "OUT"}). Returns the parse to go on with, or nothing
// with *exit_code set (kExitOk after printing help, else kExitUsage).
std::optional<ParsedArgs> ParseCommand(const Command& self, const std::vector<std::string>& args,
                                       const OptionSpec& spec,
                                       const std::vector<std::string>& operands, int* exit_code);

// Parses a decimal integer in [min, max]; nothing if it is not one.
std::optional<uint64_t> ParseCount(const std::string& text, uint64_t min, uint64_t max);

// A file opened and its index read, ready for inspection or a load.
struct OpenedFile {
  std::shared_ptr<const Source> source;
  std::shared_ptr<const Index> index;
};
// Opens FILE (a path or any URI OpenSource opens: file://, http(s)://,
// s3://, redis://) and reads its index; the error names the file.
Result<OpenedFile> OpenTensorsFile(const std::string& uri,
                                   const SourceOptions& options = SourceOptions());

// Prints "tensorizer CMD: MESSAGE" and a pointer to --help on stderr;
// returns kExitUsage.
int UsageError(const Command& command, const std::string& message);
// Prints "tensorizer CMD: MESSAGE" on stderr; returns kExitFailed.
int Failure(const Command& command, const std::string& message);
// Writes the whole string to stdout.
void Print(const std::string& text);

}  // namespace tensorizer::cli
