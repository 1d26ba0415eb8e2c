// `tensorizer`: the command-line tool. This file only dispatches to the
// subcommands (one file each) and answers --help and --version.
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "command.h"
#include "interrupt.h"
#include "tensorizer/cancel.h"

namespace tensorizer::cli {
namespace {

const Command* const kCommands[] = {&kInspectCommand, &kVerifyCommand, &kBenchCommand,
                                    &kConvertCommand, &kCpCommand};

std::string MainHelp() {
  std::string text =
      "usage: tensorizer COMMAND [OPTIONS] FILE...\n"
      "       tensorizer --help | --version\n"
      "\n"
      "Reads, checks, converts and copies .tensors files (tensorizer data versions\n"
      "1-5) and safetensors files, without Python. FILE is a path or a URI:\n"
      "file://, http(s)://, s3://bucket/key or redis://host/prefix; convert and cp\n"
      "also write to s3://bucket/key. S3 credentials come from the environment and\n"
      "config files, never from the command line.\n"
      "\n"
      "commands:\n";
  for (const Command* c : kCommands) {
    std::string name = c->name;
    name.resize(10, ' ');
    text += "  " + name + c->summary + "\n";
  }
  text +=
      "\n"
      "Run 'tensorizer COMMAND --help' for the options of one command.\n"
      "\n"
      "exit status:\n"
      "  0  success\n"
      "  1  the file failed: it cannot be read, is not a valid .tensors file,\n"
      "     a tensor failed its hash check, or the output cannot be written\n"
      "  2  usage error: unknown command or option, missing or extra argument\n"
      "  130, 143  interrupted by SIGINT (Ctrl-C) or SIGTERM: the command was\n"
      "     cancelled and cleaned up (a save leaves no file); a second signal\n"
      "     exits at once\n";
  return text;
}

const Command* FindCommand(const std::string& name) {
  for (const Command* c : kCommands) {
    if (name == c->name) return c;
  }
  return nullptr;
}

int Main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty()) {
    std::fputs(MainHelp().c_str(), stderr);
    return kExitUsage;
  }
  const std::string& first = args[0];
  if (first == "-h" || first == "--help") {
    Print(MainHelp());
    return kExitOk;
  }
  if (first == "-V" || first == "--version") {
    Print("tensorizer " TENSORIZER_VERSION "\n");
    return kExitOk;
  }
  if (first == "help") {
    if (args.size() == 1) {
      Print(MainHelp());
      return kExitOk;
    }
    const Command* c = FindCommand(args[1]);
    if (c == nullptr || args.size() > 2) {
      std::fprintf(stderr, "tensorizer help: no command '%s'\nTry 'tensorizer --help'.\n",
                   args[1].c_str());
      return kExitUsage;
    }
    Print(c->help);
    return kExitOk;
  }
  const Command* c = FindCommand(first);
  if (c == nullptr) {
    const char* what = first.rfind('-', 0) == 0 ? "unknown option" : "unknown command";
    std::fprintf(stderr, "tensorizer: %s '%s'\nTry 'tensorizer --help'.\n", what, first.c_str());
    return kExitUsage;
  }
  return c->run(std::vector<std::string>(args.begin() + 1, args.end()));
}

}  // namespace
}  // namespace tensorizer::cli

int main(int argc, char** argv) {
  // Past RLIMIT_FSIZE a write raises SIGXFSZ, whose default kills the tool
  // and leaves the save's temporary file behind. Ignored, the write fails
  // with EFBIG and the save cleans up and reports it, as Python does.
  std::signal(SIGXFSZ, SIG_IGN);
  const auto cancel = tensorizer::cli::InstallInterruptHandlers();
  int rc;
  try {
    tensorizer::CancelScope scope(cancel);
    rc = tensorizer::cli::Main(argc, argv);
  } catch (const std::exception& e) {
    // The library reports errors as values; an exception reaching here is a
    // bug, but it must end in a message and exit status 1, not an abort.
    std::fprintf(stderr, "tensorizer: internal error: %s\n", e.what());
    return tensorizer::cli::kExitFailed;
  }
  if (int sig = tensorizer::cli::InterruptSignal()) {
    // The command stopped and cleaned up; its "cancelled" error is not news.
    std::fprintf(stderr, "tensorizer: interrupted by %s\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    std::fflush(stdout);
    return 128 + sig;
  }
  // Output that did not reach its destination (a full disk, a closed pipe
  // with SIGPIPE ignored) is a failure, not a success.
  if (std::fflush(stdout) != 0 || std::ferror(stdout)) {
    std::fprintf(stderr, "tensorizer: error writing output: %s\n", std::strerror(errno));
    return tensorizer::cli::kExitFailed;
  }
  return rc;
}
