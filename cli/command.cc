// Option parsing and message helpers for the subcommands; see command.h.
// Hand-written because the tool has five subcommands with flat options
// (no nesting, no types beyond text and counts), and CLI11 is not among the
// build's dependencies.
#include "command.h"

#include <algorithm>
#include <cstdio>

#include "interrupt.h"
#include "tensorizer/load.h"

namespace tensorizer::cli {

bool ParsedArgs::has(const std::string& flag) const {
  return std::find(flags.begin(), flags.end(), flag) != flags.end();
}

std::optional<std::string> ParsedArgs::value(const std::string& option) const {
  auto it = values.find(option);
  if (it == values.end()) return std::nullopt;
  return it->second;
}

std::optional<ParsedArgs> ParseArgs(const std::vector<std::string>& args, const OptionSpec& spec,
                                    std::string* error) {
  auto contains = [](const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
  };
  ParsedArgs out;
  bool options_done = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (options_done || arg == "-" || arg.empty() || arg[0] != '-') {
      out.positional.push_back(arg);
      continue;
    }
    if (arg == "--") {
      options_done = true;
      continue;
    }
    if (arg == "-h" || arg == "--help") {
      out.help = true;
      continue;
    }
    std::string name = arg;
    std::optional<std::string> inline_value;
    if (size_t eq = arg.find('='); arg.rfind("--", 0) == 0 && eq != std::string::npos) {
      name = arg.substr(0, eq);
      inline_value = arg.substr(eq + 1);
    }
    if (contains(spec.flags, name)) {
      if (inline_value) {
        *error = "option '" + name + "' takes no value";
        return std::nullopt;
      }
      out.flags.push_back(name);
    } else if (contains(spec.valued, name)) {
      if (inline_value) {
        out.values[name] = *inline_value;
      } else if (i + 1 < args.size()) {
        out.values[name] = args[++i];
      } else {
        *error = "option '" + name + "' needs a value";
        return std::nullopt;
      }
    } else {
      *error = "unknown option '" + name + "'";
      return std::nullopt;
    }
  }
  return out;
}

std::optional<uint64_t> ParseCount(const std::string& text, uint64_t min, uint64_t max) {
  if (text.empty() || text.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  if (v < min || v > max) return std::nullopt;
  return v;
}

Result<OpenedFile> OpenTensorsFile(const std::string& uri, const SourceOptions& options) {
  auto source = OpenSource(uri, options);
  if (!source.ok()) return source.status();
  std::shared_ptr<const Source> shared = std::move(source).value();
  auto index = ReadIndex(*shared);
  if (!index.ok()) return index.status();
  return OpenedFile{shared, std::make_shared<const Index>(std::move(index).value())};
}

std::optional<ParsedArgs> ParseCommand(const Command& self, const std::vector<std::string>& args,
                                       const OptionSpec& spec,
                                       const std::vector<std::string>& operands, int* exit_code) {
  std::string error;
  auto parsed = ParseArgs(args, spec, &error);
  if (!parsed) {
    *exit_code = UsageError(self, error);
    return std::nullopt;
  }
  if (parsed->help) {
    Print(self.help);
    *exit_code = kExitOk;
    return std::nullopt;
  }
  if (parsed->positional.size() != operands.size()) {
    std::string names;
    for (const std::string& op : operands) names += (names.empty() ? "" : " and ") + op;
    if (operands.size() == 1) {
      error = parsed->positional.empty() ? "missing " + names : "expected one " + names;
    } else {
      std::string spaced;
      for (const std::string& op : operands) spaced += (spaced.empty() ? "" : " ") + op;
      error = parsed->positional.size() < operands.size() ? "needs " + names : "expected " + spaced;
    }
    *exit_code = UsageError(self, error);
    return std::nullopt;
  }
  return parsed;
}

int UsageError(const Command& command, const std::string& message) {
  std::fprintf(stderr, "tensorizer %s: %s\nTry 'tensorizer %s --help'.\n", command.name,
               message.c_str(), command.name);
  return kExitUsage;
}

int Failure(const Command& command, const std::string& message) {
  // After a Ctrl-C the failure is the cancellation, which main reports.
  if (InterruptSignal() != 0) return kExitFailed;
  std::fprintf(stderr, "tensorizer %s: %s\n", command.name, message.c_str());
  return kExitFailed;
}

void Print(const std::string& text) { std::fwrite(text.data(), 1, text.size(), stdout); }

}  // namespace tensorizer::cli
