module github.com/kmsd/kmsd/compat

go 1.26.0

require (
	github.com/minio/kms-go/kes v0.3.1
	github.com/prometheus/client_model v0.6.0
	github.com/prometheus/common v0.51.1
	golang.org/x/crypto v0.58.0
	gopkg.in/yaml.v3 v3.0.1
)

require (
	aead.dev/mem v0.2.0 // indirect
	github.com/kr/pretty v0.3.1 // indirect
	golang.org/x/sys v0.49.0 // indirect
	google.golang.org/protobuf v1.33.0 // indirect
)
