"""Reading documents (files, llms.txt sites) into chunks: parsers, chunker, crawler, pipeline."""
