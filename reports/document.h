// A renderer-neutral document: headings, paragraphs, tables, lists, code blocks and figures.
// report_builder.h builds one from a SweepReport; markdown.h and html.h render it, so the two
// formats cannot disagree on a figure. Inline text may use `code` and **bold** only.
#pragma once

#include <string>
#include <vector>

namespace moe::reports {

struct Table {
  std::vector<std::string> header;
  std::vector<bool> numeric;  // per column: right-aligned
  std::vector<std::vector<std::string>> rows;
};

struct Figure {
  std::string name;   // file stem under plots/: plots/<name>.svg and .png
  std::string title;  // alt text and caption
};

struct Block {
  enum class Kind { kParagraph, kNote, kTable, kList, kCode, kFigure };
  Kind kind = Kind::kParagraph;
  std::string text;                // paragraph, note, code
  Table table;                     // kTable
  std::vector<std::string> items;  // kList
  Figure figure;                   // kFigure
};

struct Section {
  int level = 2;  // 2 = "##", 3 = "###"
  std::string title;
  std::vector<Block> blocks;

  Section& Paragraph(std::string t) { return Add(Block::Kind::kParagraph, std::move(t)); }
  Section& Note(std::string t) { return Add(Block::Kind::kNote, std::move(t)); }
  Section& Code(std::string t) { return Add(Block::Kind::kCode, std::move(t)); }
  Section& AddTable(Table t) {
    Block b;
    b.kind = Block::Kind::kTable;
    b.table = std::move(t);
    blocks.push_back(std::move(b));
    return *this;
  }
  Section& List(std::vector<std::string> items) {
    Block b;
    b.kind = Block::Kind::kList;
    b.items = std::move(items);
    blocks.push_back(std::move(b));
    return *this;
  }
  Section& AddFigure(Figure f) {
    Block b;
    b.kind = Block::Kind::kFigure;
    b.figure = std::move(f);
    blocks.push_back(std::move(b));
    return *this;
  }

 private:
  Section& Add(Block::Kind k, std::string t) {
    Block b;
    b.kind = k;
    b.text = std::move(t);
    blocks.push_back(std::move(b));
    return *this;
  }
};

struct Document {
  std::string title;
  std::vector<Section> sections;
};

}  // namespace moe::reports
