module mailpipe.local/pause

go 1.24
