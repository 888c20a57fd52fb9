// Key Vault (RBAC authorization) holding the app's two secrets. The Function App reads them through
// Key Vault references (@Microsoft.KeyVault(SecretUri=...)) with its identity (Key Vault Secrets User).
@description('Region.')
param location string

@description('Tags of every resource.')
param tags object

@minLength(3)
@maxLength(24)
@description('Key Vault name.')
param name string

@secure()
@description('PostgreSQL password of the app (PGSTAC_PASSWORD).')
param pgstacPassword string

@secure()
@description('Webhook signing key (WEBHOOK_SECRET).')
param webhookSecret string

@description('Log Analytics workspace receiving the vault\'s audit log.')
param logAnalyticsWorkspaceId string

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: the Function App (no VNet) resolves its Key Vault references over the public endpoint; access is by Entra RBAC only.
  // checkov:skip=CKV_AZURE_189: same reason as CKV_AZURE_109.
  name: name
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: { family: 'A', name: 'standard' }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 7
    enablePurgeProtection: true
    enabledForDeployment: false
    enabledForTemplateDeployment: false
    enabledForDiskEncryption: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource pgstacPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41: the app reads this secret continuously; an expiry date would break its Key Vault reference without warning. Rotate it by hand (docs/operations.md).
  parent: vault
  name: 'pgstac-password'
  properties: {
    value: pgstacPassword
    contentType: 'text/plain'
  }
}

resource webhookSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  // checkov:skip=CKV_AZURE_41: the app reads this secret continuously; an expiry date would break its Key Vault reference without warning. Rotate it by hand (docs/operations.md).
  parent: vault
  name: 'webhook-secret'
  properties: {
    value: webhookSecret
    contentType: 'text/plain'
  }
}

resource vaultDiagnostics 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'audit'
  scope: vault
  properties: {
    workspaceId: logAnalyticsWorkspaceId
    logs: [{ categoryGroup: 'audit', enabled: true }]
  }
}

output name string = vault.name
output id string = vault.id
// Versionless URIs: the app picks up a rotated secret without a redeploy.
output pgstacPasswordSecretUri string = pgstacPasswordSecret.properties.secretUri
output webhookSecretUri string = webhookSecretSecret.properties.secretUri
