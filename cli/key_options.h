// Key options of the subcommands that read or write encrypted files.
//
// Keys never appear on the command line (where `ps` and shell history would
// show them): a key is read from a file of exactly 32 raw bytes, and a
// passphrase from an environment variable named on the command line.
//
//   reading:  --key-file F | --passphrase-env VAR
//   writing:  --encrypt-key-file F | --encrypt-passphrase-env VAR [--ops N] [--mem N]
//
// --ops and --mem set the Argon2id limits of a new passphrase key: a preset
// name (min, interactive, moderate, sensitive; default moderate, as
// tensorizer's EncryptionParams.from_string) or a number (--mem in bytes).
#pragma once

#include <optional>
#include <string>

#include "command.h"
#include "tensorizer/load.h"
#include "tensorizer/write.h"

namespace tensorizer::cli {

inline const char* const kDecryptionOptions[] = {"--key-file", "--passphrase-env"};
inline const char* const kEncryptionOptions[] = {"--encrypt-key-file", "--encrypt-passphrase-env",
                                                 "--ops", "--mem"};

// What went wrong with key options: a usage error (exit 2: conflicting or
// malformed options) or a failure (exit 1: an unreadable key file, an unset
// variable).
struct KeyOptionError {
  bool usage = false;
  std::string message;
};

// Decryption options from --key-file / --passphrase-env; nothing when
// neither is given.
std::optional<DecryptionOptions> DecryptionFromArgs(const ParsedArgs& args,
                                                    std::optional<KeyOptionError>* error);

// Encryption from --encrypt-key-file / --encrypt-passphrase-env (a fresh
// salt, the key derived with Argon2id); nothing when neither is given.
std::optional<WriterEncryption> EncryptionFromArgs(const ParsedArgs& args,
                                                   std::optional<KeyOptionError>* error);

// Reports `error` for `command`; returns the exit code.
int KeyOptionFailure(const Command& command, const KeyOptionError& error);

}  // namespace tensorizer::cli
