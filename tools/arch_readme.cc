// arch_readme [--write README.md]: prints the README's list of supported architectures, generated
// from the architecture table the library embeds (src/model/arch/*.json), or rewrites the part of
// README.md between its "<!-- architectures: begin ... -->" and "<!-- architectures: end -->"
// lines. tests/model/arch_table_test.cc checks that README.md holds exactly this list.
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>

#include "model/arch_table.h"

int main(int argc, char** argv) {
  using stquant::model::ArchTable;
  const stquant::Result<const ArchTable*> table = ArchTable::Builtin();
  if (!table.ok()) {
    std::fprintf(stderr, "arch_readme: %s\n", table.status().ToString().c_str());
    return 1;
  }
  const std::string list = (*table)->MarkdownList();
  if (argc == 1) {
    std::fwrite(list.data(), 1, list.size(), stdout);
    return 0;
  }
  if (argc != 3 || std::string(argv[1]) != "--write") {
    std::fprintf(stderr, "usage: arch_readme [--write README.md]\n");
    return 2;
  }
  std::ifstream in(argv[2], std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  std::string readme = text.str();
  const size_t begin = readme.find("<!-- architectures: begin");
  const size_t end = readme.find("<!-- architectures: end -->");
  if (!in || begin == std::string::npos || end == std::string::npos || end < begin) {
    std::fprintf(stderr, "arch_readme: %s has no <!-- architectures: begin/end --> markers\n", argv[2]);
    return 2;
  }
  const size_t body = readme.find('\n', begin) + 1;
  readme.replace(body, end - body, list);
  std::ofstream out(argv[2], std::ios::binary | std::ios::trunc);
  out << readme;
  return out ? 0 : 3;
}
